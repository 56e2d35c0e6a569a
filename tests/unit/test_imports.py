"""Importing vox_flow has no side effects, and clients load no control-store code.

Each check runs in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "nacl", "vox_flow.store", "vox_flow.audit")


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_clients_and_workers_load_no_store_crypto_or_migrations() -> None:
    loaded = _run(
        "import json, sys\n"
        "import vox_flow.tasks, vox_flow.submit, vox_flow.workflow, vox_flow.worker.execution\n"
        f"print(json.dumps({{'heavy': sorted(m for m in sys.modules if m.startswith({HEAVY!r}))}}))"
    )
    assert loaded["heavy"] == []


def test_importing_the_app_changes_no_global_state() -> None:
    state = _run(
        "import json, os\n"
        "from opentelemetry import trace\n"
        "before = trace.get_tracer_provider()\n"
        "os.environ['VOX_FLOW_LEASE_SECONDS'] = 'not a number'  # read only if built\n"
        "import vox_flow.app\n"
        "print(json.dumps({'same_provider': trace.get_tracer_provider() is before,\n"
        "                  'built': vox_flow.app._default is not None}))"
    )
    assert state == {"same_provider": True, "built": False}


def test_building_an_app_installs_no_tracer_provider() -> None:
    state = _run(
        "import json\n"
        "from opentelemetry import trace\n"
        "from vox_flow.app import create_app\n"
        "from vox_flow.config import Settings\n"
        "before = trace.get_tracer_provider()\n"
        "app = create_app(Settings(broker_url='redis://127.0.0.1:1/0'))\n"
        "print(json.dumps({'same_provider': trace.get_tracer_provider() is before}))"
    )
    assert state == {"same_provider": True}


def test_a_client_without_a_provider_still_gets_trace_ids() -> None:
    # No SDK provider installed: submit's span comes from vox_flow's private provider, so a
    # handle still carries a W3C trace id, and the global provider stays the no-op proxy.
    state = _run(
        "import json\n"
        "from opentelemetry import trace\n"
        "from vox_flow import telemetry\n"
        "with telemetry.tracer().start_as_current_span('x'):\n"
        "    trace_id = telemetry.current_trace_id()\n"
        "print(json.dumps({'trace_id': trace_id,\n"
        "                  'global': type(trace.get_tracer_provider()).__name__}))"
    )
    assert isinstance(state["trace_id"], str) and len(state["trace_id"]) == 32
    assert state["global"] == "ProxyTracerProvider"
