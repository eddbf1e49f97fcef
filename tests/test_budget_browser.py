"""Direct-mode vGPU-hour budgets in JupyterLab, in a real browser (Debian's chromium): the status bar's and the
sidebar's "0.1 of 1 vGPU-hours left this week · resets Tue 09:00" (warned), and an instructor's Top up in the
class section, with a refusal showing the server's sentence. The budget's use was kept by an earlier server
(its budget file), which this one continues."""

import getpass
import json
import subprocess
import time
from pathlib import Path

import pytest

from orion_jupyter.core.budgets import BudgetConfig
from orion_jupyter.server.budgets import BUDGET_FILE

BROWSER_DIR = Path(__file__).parent / "browser"
NAME = "@orion-jupyter/labextension"
BUDGETS = {"student": 1, "reset": {"weekly": "tue 09:00"}, "warn": [0.8, 0.95]}
ZONE = "Europe/Berlin"


@pytest.fixture
def direct_budget(tmp_path):
    """Before lab_server starts (its HOME is tmp_path): this user's budget of 1 vGPU-hour a week, 0.9 of it
    used and warned at 80 % (the budget file an earlier server kept); the user an instructor; the page's
    budget refreshed every 5 s."""
    user = getpass.getuser()  # the server's user: kernels and the page act as it (one person, token login)
    config = tmp_path / ".jupyter"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"OrionJupyter": {
        "budgets": BUDGETS, "lab_timezone": ZONE, "instructors": [user]}}))
    window = BudgetConfig.parse(BUDGETS, {}, ZONE).reset.window(time.time())[0]
    data = tmp_path / ".local" / "share" / "jupyter"
    data.mkdir(parents=True)
    (data / BUDGET_FILE).write_text(json.dumps({
        "window": window.isoformat(), "used": {f"user:{user}": 0.9}, "topups": {}, "warned": {f"user:{user}": 0.8},
        "metered": {}, "courses": {}}))
    settings = config / "lab" / "user-settings" / NAME
    settings.mkdir(parents=True)
    (settings / "model.jupyterlab-settings").write_text(json.dumps({"budgetRefreshInterval": 5}))
    return user


def test_the_budget_in_the_status_bar_the_sidebar_and_the_class_view(direct_budget, lab_server, tmp_path):
    run = subprocess.run(["node", str(BROWSER_DIR / "budget.mjs"), lab_server.base, lab_server.token, str(tmp_path),
                          direct_budget], capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], (result["step"], result.get("error"), result)
    assert not [e for e in result["errors"] if "@orion-jupyter" in e], result["errors"]

    # 1. The line, as the server meters it (the reset in the lab's time zone), warned: its colour and hover.
    assert result["status_text"] == "0.1 of 1 vGPU-hours left this week · resets Tue 09:00", result
    assert result["status_warning"] and result["status_color"] != result["plain_color"], result
    assert "0.90 of 1 vGPU-hours used" in result["status_title"], result["status_title"]
    assert "80% of your budget is used" in result["status_title"], result["status_title"]
    assert result["panel_text"] == result["status_text"]

    # 2. The class view: use and what is left, then Top up 2 hours (the warning is taken back).
    assert result["row_before"].startswith(direct_budget) and "0.9 of 1 used · 0.1 left" in result["row_before"]
    assert "Top up" in result["row_before"], result["row_before"]
    assert result["topup_2_dialog"] == f"Top up {direct_budget}'s vGPU-hour budget", result["topup_2_dialog"]
    assert "0.9 of 3 used · 2.1 left" in result["row_after"], result["row_after"]
    assert result["status_after"] == "2.1 of 3 vGPU-hours left this week · resets Tue 09:00", result
    assert not result["status_warning_after"] and result["panel_after"] == result["status_after"]

    # 3. A refused top-up says what is allowed, in the server's words; nothing changed.
    assert result["refusal"] == 'send {"hours": N} with N more than 0 and at most 10000', result["refusal"]
    assert result["budget_after_refusal"]["budget"] == 3, result["budget_after_refusal"]
    for shot in ("budget", "budget-refused"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot
