"""The README's Python examples run as written (on the tiny golden models, under the released names)."""

from __future__ import annotations

import re

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from conftest import GOLDEN, REPO, tiny_ckpt_dir
from socodec import SoCodec


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = (REPO / "README.md").read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder like a user's: ckpts/ with the (tiny) released files, speech.flac, other.wav."""
    tiny_ckpt_dir(tmp_path / "ckpts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOCODEC_CACHE_DIR", str(tmp_path / "cache"))
    wav, rate = sf.read(GOLDEN / "ground_truth.wav", dtype="float32")
    sf.write(tmp_path / "speech.flac", wav, rate)
    chirp = load_file(str(GOLDEN / "golden_chirp.safetensors"))["input_wav"]
    sf.write(tmp_path / "other.wav", chirp.numpy(), 16000, subtype="FLOAT")
    real = SoCodec.from_pretrained.__func__
    tiny = {"analyzer_config": GOLDEN / "analyzer_tiny.json", "vocoder_config": GOLDEN / "vocoder_tiny.json"}
    monkeypatch.setattr(SoCodec, "from_pretrained", classmethod(lambda cls, d, **kw: real(cls, d, **tiny, **kw)))
    return tmp_path


def test_python_api_example_runs(workdir):
    namespace: dict = {}
    exec(compile(readme_block("## Python API"), "README.md", "exec"), namespace)
    codes, audio = namespace["codes"], namespace["audio"]
    assert codes.tokens.shape[1] == 4 and codes.padding == "published"
    assert audio.shape == (codes.num_samples,)
    assert (workdir / "resynth.wav").is_file() and (workdir / "long.wav").is_file()
    assert len(namespace["audios"]) == 2 and namespace["swapped"].shape == audio.shape


def test_language_model_example_runs(workdir):
    namespace: dict = {}
    exec(compile(readme_block("## For speech language models"), "README.md", "exec"), namespace)
    assert isinstance(namespace["speech"], torch.Tensor) and namespace["speech"].numel() > 0


def _undefined_names(source: str) -> set[str]:
    """Names a code block reads but neither defines, imports nor gets from Python's builtins."""
    import ast
    import builtins

    tree = ast.parse(source)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            defined.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - defined


def test_every_python_example_stands_alone():
    """Each README example can be pasted on its own: it uses no name from an earlier one."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert not _undefined_names(block), f"{sorted(_undefined_names(block))} undefined in:\n{block}"
