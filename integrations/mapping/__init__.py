"""Mapping between vendor payloads and canonical records, and system-of-record ownership.

- `paths`: dotted paths into payloads (compiled once).
- `transforms`: pure value transforms (value maps, dates, money, default, concatenation).
- `apply`: `CompiledMapping`, `map_inbound`, `map_outbound` (pure).
- `selectors`: loading and caching the published compiled mappings (`mapping_load_published`).
- `services`: drafts, publishing, value maps, installing and upgrading vendor defaults, preview.
- `versions`: what the console's editor does to versions: row and value-map edits of a draft,
  CSV, diff, publish with four eyes, approve, reject, rollback; `review`: the checks before a
  save or a publish, against recent payloads; `preview`: a draft against the latest payloads and
  the open cases it would fix.
- `ownership`: `load_ownership_rules`, `split_by_owner` (pure).
- `canonical`: which canonical models and fields a mapping may target.

The default mappings each vendor ships live in its folder (integrations/vendors/<vendor>/).
"""
