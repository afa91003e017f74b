"""Remote targets: plan and apply against any server that speaks `/api/2.0/serving-endpoints`.

    target = resolve_target("prod")                 # a ~/.databrickscfg profile, or a URL
    with RemoteSession.open(target, directory) as session:
        rplan = plan_remote(session, loaded, stack="team-a")
        report = apply_remote(session, rplan)

Exceptions: TargetError (cannot resolve the target), RemoteError (an API answer),
WorkflowError > StalePlan, PlanErrored (from engine.workflow).
"""

from engine.remote._calls import Call, calls_for, plan_calls
from engine.remote._client import RemoteClient, RemoteError
from engine.remote._normalise import RULES, Kind, Rule, normalise
from engine.remote._record import EndpointEntry, RecordError, TargetRecord
from engine.remote._target import ENV_TARGET, Target, TargetError, resolve_target
from engine.remote._workflow import (
    RemotePlan,
    RemoteReport,
    RemoteSession,
    StalePlan,
    apply_remote,
    import_remote,
    plan_remote,
    refresh_remote,
    reload_remote_saved,
    remote_basis,
)

__all__ = [
    "Call",
    "ENV_TARGET",
    "EndpointEntry",
    "Kind",
    "RULES",
    "RecordError",
    "RemoteClient",
    "RemoteError",
    "RemotePlan",
    "RemoteReport",
    "RemoteSession",
    "Rule",
    "StalePlan",
    "Target",
    "TargetError",
    "TargetRecord",
    "apply_remote",
    "calls_for",
    "import_remote",
    "normalise",
    "plan_calls",
    "plan_remote",
    "refresh_remote",
    "reload_remote_saved",
    "remote_basis",
    "resolve_target",
]
