"""The project's install files agree with each other, the wheel holds the whole package, the core installs alone,
and CI runs the README's test command."""

import os
import platform
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
# what only an extra may bring: a core install that has one of these pulled in more than it should
EXTRA_ONLY = {"streamlit", "tenseal", "jupyterlab", "nbval", "jupytext", "pytest", "playwright", "ray", "peft"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_name_the_same_packages():
    extras = [r for group in EXTRAS.values() for r in group if _name(r) != "encvit"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # conda users get the dependencies and every extra (the test suite needs them)
    assert {_name(r) for r in PROJECT["dependencies"] + extras} == {_name(r) for r in pip_section}
    assert "python=3.11" in env["dependencies"]


def test_required_packages_are_declared_and_the_core_is_lean():
    core = {_name(r) for r in PROJECT["dependencies"]}
    everything = core | {_name(r) for group in EXTRAS.values() for r in group}
    required = {
        "jupyterlab",
        "torch",
        "timm",
        "streamlit",
        "matplotlib",
        "pandas",
        "pytest",
        "nbval",
        "torchvision",
        "safetensors",
        "numpy",
        "pillow",
        "tqdm",
    }
    assert required <= everything, required - everything
    assert not core & EXTRA_ONLY, core & EXTRA_ONLY
    # `all` names every other extra, so that `make test` installs everything
    (everything_extra,) = EXTRAS["all"]
    assert set(everything_extra.split("[")[1].rstrip("]").split(",")) == set(EXTRAS) - {"all"}


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)[0].strip().splitlines()
    assert len(commands) == 2, commands
    test_command = commands[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in [line.strip() for line in ci.splitlines()]


def test_help_loads_no_torch_and_no_extra():
    code = (
        "import sys\nfrom encvit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(done.stdout.strip().splitlines()[-1].split(","))
    assert "encvit" in loaded
    assert not loaded & {"torch", "timm", "tenseal", "streamlit", "sklearn", "skimage", "ray", "pandas"}


def _tracked_package_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files", "encvit"], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(listed.stdout.split())


def test_the_wheel_holds_every_subpackage_and_every_shipped_file(tmp_path):
    # An editable install reads the source tree and would hide a missing __init__.py or package-data pattern.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("encvit-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    tracked = _tracked_package_files()
    assert tracked, "git lists no files under encvit/"
    missing = sorted(tracked - inside)
    assert not missing, f"the wheel lacks {len(missing)} tracked files, e.g. {missing[:5]}"
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "encvit").rglob("__init__.py")}
    assert packages <= inside and "encvit/common/__init__.py" in inside


def _torch_pins() -> list[str]:
    """The torch build scripts/setup.sh installs on this machine's architecture."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    arch = "aarch64" if platform.machine() == "aarch64" else r"\*"
    line = re.search(rf"^\s*{arch}\)\s+quiet \"\$PIP\" install -q (.+?) ;;", setup, re.M).group(1)
    return line.split()


def test_the_core_installs_alone_and_runs_the_cipher_the_methods_and_help(tmp_path):
    """`pip install encvit` in a fresh virtual environment: no extra comes along, and the core works."""
    env_dir = tmp_path / "bare"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    quiet = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    quiet.pop("VIRTUAL_ENV", None)

    def pip(*args):
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *args], check=True, capture_output=True, env=quiet, timeout=1200
        )

    pip(*_torch_pins())
    pip(str(ROOT))
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    installed = {_name(line) for line in listed.splitlines()}
    assert "encvit" in installed and "torch" in installed
    assert not installed & EXTRA_ONLY, installed & EXTRA_ONLY
    code = """
import numpy as np
from encvit.cipher import Key
from encvit.models import create_skeleton, prepare, count_trainable
key = Key.generate(block_size=4, passphrase="bare core")
images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
assert (key.decrypt(key.encrypt(images)) == images).all()
counts = [count_trainable(prepare(create_skeleton("encvit-tiny"), m, 10)) for m in ("full", "melo", "proposed")]
assert counts[1] < counts[2] < counts[0], counts
print("core ok", counts)
"""
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=quiet)
    assert done.returncode == 0 and "core ok" in done.stdout, done.stderr
    encvit = env_dir / "bin" / "encvit"
    helped = subprocess.run([str(encvit), "--help"], capture_output=True, text=True, cwd=tmp_path, env=quiet)
    assert helped.returncode == 0 and "fhe-train" in helped.stdout, helped.stderr
    # a command of an extra that is missing names the extra in one line, before any work
    refused = subprocess.run(
        [str(encvit), "fhe-train", "--limit", "40", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=quiet,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "encvit fhe-train: error: MissingExtraError: tenseal is not installed; it comes with encvit's fhe extra: "
        "pip install 'encvit[fhe]'"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]
