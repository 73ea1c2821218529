"""A local run's console: a line per step, kdflow's messages, the failing step's log; the rest to a file."""

import io

from kdflow.pipelines.console import StepConsole

KFP_OUTPUT = """\
21:00:00.001 - INFO - Executing task \x1b[96m'preprocess'\x1b[0m
21:00:00.002 - INFO - Streamed logs:
    [KFP Executor 2026-11-28 21:00:00,100 INFO]: Got executor_input:
    {
        "inputs": {"parameterValues": {"config": "data: ..."}}
    }
    21:00:01 INFO kdflow.data.preprocess: preprocess: 60 samples kept
21:00:01.500 - INFO - Task \x1b[96m'preprocess'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
21:00:01.600 - INFO - Executing task 'teacher-inference'
    Traceback (most recent call last):
    kdflow.util.errors.KdflowError: the teacher's top-1 on the test split is 0.3333
21:00:02.000 - ERROR - Task 'teacher-inference' finished with status FAILURE
"""


def test_the_console_gets_a_digest_and_the_log_gets_everything():
    log, console = io.StringIO(), io.StringIO()
    sink = StepConsole(log, console)
    for chunk in (KFP_OUTPUT[:97], KFP_OUTPUT[97:]):  # arbitrary chunks, as print() delivers them
        sink.write(chunk)
    shown = console.getvalue()
    assert log.getvalue() == KFP_OUTPUT
    assert "executor_input" not in shown and "parameterValues" not in shown
    assert "preprocess: 60 samples kept" in shown
    lines = shown.splitlines()
    assert lines[1].split()[:2] == ["done", "preprocess"] and lines[1].endswith(" s")
    assert lines[2].split()[:2] == ["FAILURE", "teacher-inference"]
    assert "KdflowError: the teacher's top-1 on the test split is 0.3333" in shown  # the failing step's log
