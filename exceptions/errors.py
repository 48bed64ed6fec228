"""Why an action on a case was refused, in words the person who tried reads as they are.

The REST API answers each with its status (exceptions/api.py): not found 404, not your queue
403, someone acted first or the case is not in a state for it 409, a request missing what it
needs 400.
"""

from __future__ import annotations


class CaseActionError(Exception):
    """An action on a case was refused; nothing was done."""


class CaseNotFound(CaseActionError):
    pass


class CaseForbidden(CaseActionError):
    """The case is in a queue the person does not work in."""


class CaseConflict(CaseActionError):
    """Someone acted on the case since the person saw it, or it is not in a state for this
    action (closed, nothing to retry)."""


class CaseRefused(CaseActionError):
    """The request lacks what the action needs (a waiver's reason, an assignee of the queue)."""


# The HTTP status of each refusal, for the pages (exceptions/views/) and the API alike.
HTTP_STATUS: dict[type[CaseActionError], int] = {
    CaseNotFound: 404,
    CaseForbidden: 403,
    CaseConflict: 409,
    CaseRefused: 400,
}
