"""Concord's vendor sandbox: Salesforce, Harvest and Xero look-alikes in one local process.

A separate process with its own in-memory state; it must never import Django. See README.md.
"""
