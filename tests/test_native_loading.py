"""How minerva finds its native code: the fallback to the references when it is missing,
MINERVA_REQUIRE_NATIVE, and running from a source checkout."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import minerva

# Hides the compiled storage module and makes loading the op library fail, as in a broken
# build, before minerva is imported.
BREAK_NATIVE = textwrap.dedent("""
    import importlib.abc, sys, warnings
    import torch

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "minerva._rollout_storage":
                raise ImportError("hidden by the test")

    sys.meta_path.insert(0, Hide())

    def fail(path):
        raise OSError("hidden by the test")

    torch.ops.load_library = fail
""")


def run_python(code: str, cwd: Path, require_native: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MINERVA_REQUIRE_NATIVE"}
    if require_native:
        env["MINERVA_REQUIRE_NATIVE"] = "1"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_missing_native_code_falls_back_to_the_references_with_warnings(tmp_path):
    code = BREAK_NATIVE + textwrap.dedent("""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import minerva
        assert not minerva.native_available()
        assert minerva.RolloutStorage is minerva.reference.RolloutStorage
        assert minerva.ops.gae is minerva.reference.gae
        messages = [str(w.message) for w in caught if "minerva: native" in str(w.message)]
        assert len(messages) == 2, messages
        storage = minerva.RolloutStorage(2, 1, (3,))
        print("fell back")
    """)
    result = run_python(code, tmp_path, require_native=False)
    assert result.returncode == 0, result.stderr
    assert "fell back" in result.stdout


def test_require_native_turns_the_fallback_into_an_import_error(tmp_path):
    result = run_python(BREAK_NATIVE + "import minerva\n", tmp_path, require_native=True)
    assert result.returncode != 0
    assert "MINERVA_REQUIRE_NATIVE is set" in result.stderr
    assert "ImportError" in result.stderr


def test_a_source_checkout_on_sys_path_still_finds_the_installed_native_code(tmp_path):
    # `python -m minerva.train` in the repository root puts the checkout (which has no
    # compiled modules) before site-packages; mimic it with a copy of the Python sources.
    installed = Path(minerva.__path__[-1])
    checkout = tmp_path / "checkout" / "minerva"
    checkout.mkdir(parents=True)
    for source in installed.rglob("*.py"):
        target = checkout / source.relative_to(installed)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    code = textwrap.dedent("""
        import minerva, minerva.storage
        print(minerva.__file__)
        assert minerva.native_available()
        assert minerva.RolloutStorage.__mro__[2].__module__ == "minerva._rollout_storage"
    """)
    result = run_python(code, checkout.parent, require_native=True)
    if not result.stdout.startswith(str(checkout)):
        pytest.skip("an editable install's import hook takes precedence over the checkout")
    assert result.returncode == 0, result.stderr


_CUDA_BUILD = os.environ.get("MINERVA_CUDA", "auto").lower()


@pytest.mark.skipif(not (_CUDA_BUILD == "on" or (_CUDA_BUILD == "auto" and shutil.which("nvcc")
                                                  and torch.version.cuda)),
                    reason="the CUDA kernels are built with MINERVA_CUDA=on, or by default "
                           "with nvcc and a torch with CUDA")
def test_cuda_kernels_are_built_when_asked_for():
    # CI builds them with MINERVA_CUDA=on, GPU or not, so a kernel that stops compiling
    # fails the build; the library is loaded only into torch with CUDA
    from minerva.native import loading

    assert any((d / "_C_cuda.so").exists() for d in loading._library_dirs())
    assert loading.CUDA_OPS_LOADED == (torch.version.cuda is not None)
