"""A non-editable install works from any directory: pipelines and schemas live inside the
devarray namespace of the wheel, not as generic top-level packages."""

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_the_tiny_demo_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    # the venv sees this interpreter's dependencies; devarray itself is installed from the repo, not editable
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [
            python,
            "-c",
            "import devarray, devarray.pipelines.llc as l, devarray.schemas as s; "
            "print(devarray.__file__); print(l.__file__); print(s.load('llc')['group'])",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    lines = where.stdout.split()
    assert all(str(env_dir) in p for p in lines[:2]) and lines[2] == "llc"  # from the wheel, not the checkout
    top = subprocess.run([python, "-c", "import pipelines"], cwd=work, capture_output=True, text=True, env=env)
    assert top.returncode != 0  # no generic top-level package installed
    demo = subprocess.run(
        [env_dir / "bin" / "devarray", "demo", "--preset", "tiny", "--quiet", "--out-dir", "runs"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "stages of runs/lr-tiny-s0.zarr" in demo.stdout and (work / "runs" / "lr-tiny-s0.png").exists()
