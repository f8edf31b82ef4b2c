"""The ported seed programs run, and say what they should."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

EXAMPLES = REPO / "examples" / "python"


def run(name: str) -> list[str]:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.splitlines()


def test_analytics_layers():
    lines = run("analytics_layers.py")
    assert lines[0] == "cpm <- analytics.feature.complete pipeline=p-1 content={'features': {'mean': 4.0, 'max': 8.0, 'min': 1.0}}"
    assert lines[1] == "cpm <- analytics.feature.error pipeline=p-2 content={'error_type': 'ValueError', 'error_message': 'no data to extract features from'}"
    assert "pipeline p-1: states {'analytics_manager': 'complete', 'analytics_service': 'complete', 'analytics_processor': 'complete'}, one correlation id: True" in lines
    assert "pipeline p-2: states {'analytics_manager': 'failed', 'analytics_service': 'failed', 'analytics_processor': 'failed'}, one correlation id: True" in lines
    # Down four layers and back up four, plus the status updates, every hop a message.
    assert "pipeline p-1: 14 messages, first from cpm, last from analytics_manager" in lines
    assert lines[-1] == "shutdown: drained 0, left 0, dead letters 0"


def test_llmgine_bus():
    lines = run("llmgine_bus.py")
    assert lines == [
        "CreateUser -> u1",
        "CreateUser rejected: invalid email 'not-an-email'",
        "event handlers ran in priority order: ['audit u1 (caused by command True)', 'welcome alice']",
        "in session job-123: 6",
        "after the session: 0",
        "payment: paid 500 after 3 attempts",
        "payment failed after 3 attempts: ValueError: negative amount",
        "dead letter: users.create reason=rejected attempts=1 handler=users.create",
        "dead letter: payments.process reason=handler_failed attempts=3 handler=payments.process",
        "inventory: 250 updates in batches of at most 100: True, 5 decreases alerted",
        "metrics: payments handled 1, failed attempts 5, dead letters 2",
        "shutdown: left 0",
    ]


def test_pipeline_messages_demo():
    lines = run("pipeline_messages_demo.py")
    assert lines == [
        "cpm <- cpm.pipeline.request PipelineRequest {'run_id': 'run-1', 'dataset': 'sales.csv', 'csv': None, 'fail': 'analytics', 'hold': None, 'outage': None, 'rows': 120, 'slow': None}",
        "staging-manager <- staging.load.request Job: Job(run_id='run-1', dataset='sales.csv', attempt=1, fail='analytics', hold=None, outage=None, slow=None)",
        "same correlation: True",
        "cancel: PipelineCancel(run_id='run-1')",
        "message types: ['Job', 'PipelineCancel', 'PipelineRequest', 'RunQuery', 'RunsQuery']",
    ]
