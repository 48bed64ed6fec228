"""Workflow steps in words: what PMO reads as a run's stage on the provisioning board, and what a
stuck-run case (integrations/workflows/checks.py) names.

A process's steps are identifiers (``erp_customer``); people see the stage they stand for
("Customer in the ERP"). A step of a process not listed here reads as its name in words, so a
new process shows something sensible before its words are added.
"""

from __future__ import annotations

from integrations.models import RunState

PROCESS_WORDS: dict[str, str] = {
    "provisioning": "project provisioning",
    "time_to_erp": "approved time to the ERP",
    "milestone_billing": "milestone billing",
    "status_back_sync": "status back-sync",
    "change_order": "change orders",
}

STEP_WORDS: dict[str, dict[str, str]] = {
    "provisioning": {
        "validate": "Checking account, contract and tax profile",
        "erp_customer": "Customer in the ERP",
        "psa_client": "Client in the PSA",
        "psa_project": "Project in the PSA",
        "psa_tasks": "Standard tasks in the PSA",
        "psa_milestones": "Milestones in the PSA",
        "psa_team": "Delivery team staffed in the PSA",
        "erp_dimension": "Project dimension in the ERP",
        "write_back": "Ids written back to the CRM and PSA",
    },
    # integrations/workflows/change_orders.py: a contract amendment propagated.
    "change_order": {
        "assess": "Checking the amendment against what is invoiced",
        "psa_project": "Project terms in the PSA",
        "concord": "Project terms or rate card in Concord",
        "erp": "What it means for the ERP",
    },
}

# The stage of a run that is done, per process ("Done" for the others).
DONE_WORDS: dict[str, str] = {"provisioning": "Provisioned", "change_order": "Propagated"}


def process_words(process: str) -> str:
    return PROCESS_WORDS.get(process, process.replace("_", " "))


def step_words(process: str, step: str, state: str = "") -> str:
    """The stage in words: the step's words, or the process's word for a run that is done."""
    if state == RunState.DONE:
        return DONE_WORDS.get(process, "Done")
    return STEP_WORDS.get(process, {}).get(step) or step.replace("_", " ").capitalize()
