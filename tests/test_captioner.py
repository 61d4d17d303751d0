"""``fba caption``: a tiny randomly initialised LLaVA (built here, saved, loaded by path) and the template backend.

The random model writes garbage; these tests check structure: prompt assembly, batching, the output format,
resuming after an interrupted run, and the errors.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.llava_shapes import TINY, llava_processor, random_llava
from fba.apps.captioner import (
    LLAVA15_PROMPT,
    LlavaCaptioner,
    build_prompt,
    caption_images,
    clean_caption,
    dataset_images,
    resume,
)
from fba.cli import main
from fba.data.captions import BG_PROMPT, FG_PROMPT, Caption, CaptionError, CaptionStore, attach_captions
from fba.data.datasets import build_dataset

# The chat template llava-hf/llava-1.5-7b-hf ships (chat_template.json).
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def tiny_llava(folder: Path, chat_template: str | None = None) -> Path:
    """A LLaVA-1.5-shaped model, 2-layer CLIP tower (28x28, 4 patches) and 2-layer Llama, saved to ``folder``."""
    processor = llava_processor(TINY, chat_template)
    random_llava(TINY, processor).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def llava_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llava(tmp_path_factory.mktemp("tiny_llava_chat"), chat_template=LLAVA15_CHAT_TEMPLATE)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def caption_cli(market_root: Path, out: Path, *extra: str) -> int:
    return main(["caption", "--dataset", "market1501", "--root", str(market_root), "--out", str(out),
                 "--no-progress", *extra])


def llava_cli(market_root: Path, out: Path, model: Path, batch_size: int = 3) -> int:
    return caption_cli(market_root, out, "--model", str(model), "--batch-size", str(batch_size),
                       "--max-new-tokens", "6", "--max-new-tokens-bg", "5", "--device", "cpu")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  A man in a  red\n coat. ", "A man in a red coat."),
        ("ASSISTANT: A man.", "A man."),
        (" ASSISTANT : ASSISTANT:\tA tree", "A tree"),
        ("A wall. USER: describe more ASSISTANT: no", "A wall."),
        ("ASSISTANT:", ""),
    ],
)
def test_clean_caption_trims_echoes_turns_and_whitespace(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_prompt_is_llava15_format_with_or_without_chat_template(llava_dir: Path, llava_chat_dir: Path) -> None:
    from transformers import AutoProcessor

    plain = AutoProcessor.from_pretrained(llava_dir, local_files_only=True)
    chat = AutoProcessor.from_pretrained(llava_chat_dir, local_files_only=True)
    assert not getattr(plain, "chat_template", None) and chat.chat_template
    for prompt in (FG_PROMPT, BG_PROMPT):
        expected = f"USER: <image>\n{prompt} ASSISTANT:"
        assert LLAVA15_PROMPT.format(prompt=prompt) == expected
        assert build_prompt(plain, prompt) == expected
        assert build_prompt(chat, prompt).strip() == expected


class SpyProcessor:
    """Records what the captioner hands the processor in each call."""

    def __init__(self, processor):
        self.processor, self.calls = processor, []

    def __getattr__(self, name: str):
        return getattr(self.processor, name)

    def __call__(self, **kwargs):
        batch = self.processor(**kwargs)
        self.calls.append((kwargs["text"], kwargs["images"], batch["attention_mask"]))
        return batch


def test_one_left_padded_generate_call_holds_both_prompts(llava_dir: Path, market_root: Path) -> None:
    captioner = LlavaCaptioner.load(str(llava_dir), device="cpu", max_new_tokens=(6, 5))
    spy = SpyProcessor(captioner.processor)
    captioner.processor = spy
    images = dataset_images(build_dataset("market1501", market_root))[:3]
    captions = captioner.caption(images)

    assert len(spy.calls) == 1
    texts, pictures, mask = spy.calls[0]
    assert texts == [captioner.texts[0]] * 3 + [captioner.texts[1]] * 3
    assert FG_PROMPT in texts[0] and BG_PROMPT in texts[3] and FG_PROMPT not in texts[3]
    assert len(pictures) == 6 and all(p.size[0] == p.size[1] for p in pictures)  # padded to squares
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # left padding: the shorter fg rows
    assert len(captions) == 3 and all(c.fg and c.bg for c in captions)


def test_batched_captions_equal_one_by_one(llava_dir: Path, market_root: Path) -> None:
    captioner = LlavaCaptioner.load(str(llava_dir), device="cpu", max_new_tokens=(6, 5))
    images = dataset_images(build_dataset("market1501", market_root))[:4]
    assert captioner.caption(images) == [captioner.caption([image])[0] for image in images]


def test_empty_answer_is_retried_then_an_error(llava_dir: Path, market_root: Path) -> None:
    captioner = LlavaCaptioner.load(str(llava_dir), device="cpu", max_new_tokens=(6, 5))
    tokenizer = captioner.processor.tokenizer
    eos, word = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("coat")
    images = dataset_images(build_dataset("market1501", market_root))[:2]
    calls = []

    def first_empty(pictures, texts, max_new_tokens, min_new_tokens=None):
        calls.append(min_new_tokens)
        return [[eos] if min_new_tokens is None and row == 3 else [word, eos] for row in range(len(texts))]

    captioner.generate = first_empty
    assert captioner.caption(images) == [Caption("coat", "coat")] * 2
    assert calls == [None, 5]

    captioner.generate = lambda pictures, texts, max_new_tokens, min_new_tokens=None: [[eos]] * len(texts)
    with pytest.raises(CaptionError, match=r"empty fg caption twice"):
        captioner.caption(images)


def test_cli_captions_every_image_once_in_the_spec_format(
    llava_chat_dir: Path, market_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "captions.jsonl"
    assert llava_cli(market_root, out, llava_chat_dir) == 0
    dataset = build_dataset("market1501", market_root)
    lines = read_lines(out)
    assert [line["image"] for line in lines] == [key for key, _ in dataset_images(dataset)]
    assert len(lines) == len(dataset.train) + len(dataset.query) + len(dataset.gallery)
    for line in lines:
        assert set(line) == {"image", "fg", "bg"} and line["fg"].strip() and line["bg"].strip()
        assert line["fg"] == " ".join(line["fg"].split()) and "ASSISTANT:" not in line["fg"]
        assert not Path(line["image"]).is_absolute() and (market_root / line["image"]).is_file()
    attach_captions(dataset, CaptionStore.load(out))  # every image has its captions


def test_cli_resumes_after_a_cut_off_last_line(llava_dir: Path, market_root: Path, tmp_path: Path) -> None:
    full, partial = tmp_path / "full.jsonl", tmp_path / "partial.jsonl"
    assert llava_cli(market_root, full, llava_dir) == 0
    complete = full.read_text(encoding="utf-8").splitlines(keepends=True)
    partial.write_text("".join(complete[:4]) + complete[4][:25], encoding="utf-8")

    assert llava_cli(market_root, partial, llava_dir, batch_size=2) == 0
    assert partial.read_text(encoding="utf-8").splitlines(keepends=True)[:4] == complete[:4]
    assert sorted(line["image"] for line in read_lines(partial)) == sorted(line["image"] for line in read_lines(full))

    before = partial.read_bytes()
    assert llava_cli(market_root, partial, llava_dir) == 0  # nothing left to do: the file is untouched
    assert partial.read_bytes() == before


class FailAfter:
    """A backend that captions ``limit`` images, then dies like a killed process."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, []

    def caption(self, images):
        if len(self.seen) + len(images) > self.limit:
            raise KeyboardInterrupt
        self.seen += [key for key, _ in images]
        return [Caption(f"fg of {key}", f"bg of {key}") for key, _ in images]


def test_interrupted_run_resumes_without_duplicates_or_gaps(market_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    images = dataset_images(build_dataset("market1501", market_root))
    with pytest.raises(KeyboardInterrupt):
        caption_images(images, FailAfter(7), out, batch_size=3, progress=False)
    done = resume(out)
    assert done == {key for key, _ in images[:6]}  # two whole batches written, the third lost

    rest = FailAfter(len(images))
    todo = [image for image in images if image[0] not in done]
    assert caption_images(todo, rest, out, batch_size=3, progress=False) == len(images) - 6
    assert rest.seen == [key for key, _ in images[6:]]
    store = CaptionStore.load(out)  # raises on a duplicate
    assert list(store) == [key for key, _ in images]
    assert all(store[key] == Caption(f"fg of {key}", f"bg of {key}") for key, _ in images)


FIRST_RECORD = '{"image": "a.jpg", "fg": "x", "bg": "y"}\n'


@pytest.mark.parametrize("cut", [
    b'{"image": "b.jpg", "fg": "x", "bg": "y"',
    b'{"image": "b.jpg", "fg": "x", "bg": ',
    '{"image": "b.jpg", "fg": "x", "bg": "é'.encode()[:-1],  # half of a two-byte character
])
def test_resume_drops_a_cut_off_last_line(tmp_path: Path, cut: bytes) -> None:
    out = tmp_path / "captions.jsonl"
    out.write_bytes(FIRST_RECORD.encode() + cut)
    assert resume(out) == {"a.jpg"}
    assert out.read_text(encoding="utf-8") == FIRST_RECORD


def test_resume_keeps_a_complete_last_record_without_its_newline(tmp_path: Path) -> None:
    # A hand-edited file often lacks the final newline: its last caption is kept, not replaced by a new one.
    out = tmp_path / "captions.jsonl"
    last = '{"image": "b.jpg", "fg": "edited fg", "bg": "edited bg"}'
    out.write_text(FIRST_RECORD + last, encoding="utf-8")
    assert resume(out) == {"a.jpg", "b.jpg"}
    assert out.read_text(encoding="utf-8") == FIRST_RECORD + last + "\n"

    backend = FailAfter(1)
    assert caption_images([("c.jpg", "/unused/c.jpg")], backend, out, batch_size=1, progress=False) == 1
    store = CaptionStore.load(out)
    assert list(store) == ["a.jpg", "b.jpg", "c.jpg"]
    assert store["b.jpg"] == Caption("edited fg", "edited bg")


def test_resume_rejects_a_broken_complete_line(tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    out.write_text('{"image": "a.jpg", "fg": "x", "bg": "y"}\n{"image": "b.jpg", "fg": ""\n', encoding="utf-8")
    with pytest.raises(CaptionError, match=r"captions.jsonl, line 2"):
        resume(out)


def test_writer_refuses_an_empty_caption(tmp_path: Path) -> None:
    class Blank:
        def caption(self, images):
            return [Caption("a person", "  ")] * len(images)

    with pytest.raises(CaptionError, match=r"empty bg caption for image 'a.jpg'"):
        caption_images([("a.jpg", "/nowhere/a.jpg")], Blank(), tmp_path / "c.jsonl", batch_size=2, progress=False)


def test_missing_model_folder_is_a_clear_error(market_root: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_model"
    assert caption_cli(market_root, tmp_path / "c.jsonl", "--model", str(missing), "--device", "cpu") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and re.search(r"^fba caption: error: .*no_such_model.*--allow-download", error)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="bf16 captioning on GPU needs CUDA")
def test_gpu_captions_in_bf16(llava_dir: Path, market_root: Path, tmp_path: Path) -> None:
    import torch

    captioner = LlavaCaptioner.load(str(llava_dir), max_new_tokens=(6, 5))
    assert captioner.model.device.type == "cuda" and captioner.model.dtype == torch.bfloat16
    out = tmp_path / "captions.jsonl"
    assert caption_cli(market_root, out, "--model", str(llava_dir), "--batch-size", "4", "--max-new-tokens", "6") == 0
    assert len(CaptionStore.load(out)) == len(dataset_images(build_dataset("market1501", market_root)))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="the compiled static-cache decode runs on CUDA")
def test_gpu_static_cache_gives_the_dynamic_cache_captions(llava_dir: Path, market_root: Path) -> None:
    images = dataset_images(build_dataset("market1501", market_root))[:5]
    dynamic = LlavaCaptioner.load(str(llava_dir), dtype="fp32", max_new_tokens=(6, 5))
    static = LlavaCaptioner.load(str(llava_dir), dtype="fp32", max_new_tokens=(6, 5), static_cache=True)
    assert static.caption(images[:3]) + static.caption(images[3:]) == dynamic.caption(images)  # 2nd: a smaller batch


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fba.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, ids=4, cams=2, per_camera=2, height=32, width=16, progress=False, overwrite=True)
    return root


def test_template_backend_rebuilds_the_generators_captions_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    generated = (synthetic_root / "captions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(generated[:5]) + generated[5][:-30], encoding="utf-8")  # a run killed mid-line
    args = ["caption", "--dataset", "synthetic", "--root", str(synthetic_root), "--out", str(out), "--no-progress"]
    assert main([*args, "--backend", "template"]) == 0
    assert out.read_text(encoding="utf-8").splitlines(keepends=True)[:5] == generated[:5]
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == sorted(line.rstrip("\n") for line in generated)


def test_llava_backend_captions_the_synthetic_set(llava_dir: Path, synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    assert main(["caption", "--dataset", "synthetic", "--root", str(synthetic_root), "--out", str(out), "--no-progress",
                 "--model", str(llava_dir), "--batch-size", "8", "--max-new-tokens", "4", "--max-new-tokens-bg", "4",
                 "--device", "cpu"]) == 0
    dataset = build_dataset("synthetic", synthetic_root)
    store = CaptionStore.load(out)
    assert set(store) == set(CaptionStore.load(synthetic_root / "captions.jsonl"))
    attach_captions(dataset, store)


def test_template_backend_without_attributes_names_the_file(market_root: Path, tmp_path: Path, capsys) -> None:
    assert caption_cli(market_root, tmp_path / "c.jsonl", "--backend", "template") == 2
    assert re.search(r"^fba caption: error: .*market/attributes.jsonl does not exist", capsys.readouterr().err)


def test_allow_download_without_network_fails_fast(market_root: Path, tmp_path: Path, cli_error, monkeypatch) -> None:
    import socket
    import time

    def unreachable(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    cli_error(["caption", "--dataset", "market1501", "--root", market_root, "--out", tmp_path / "c.jsonl",
               "--no-progress", "--model", "someone/llava-model", "--allow-download", "--device", "cpu"],
              r"--allow-download: cannot reach huggingface.co:443 to download 'someone/llava-model'")
    assert time.perf_counter() - started < 30
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli_error(["caption", "--dataset", "market1501", "--root", market_root, "--out", tmp_path / "c.jsonl",
               "--no-progress", "--model", "someone/llava-model", "--allow-download", "--device", "cpu"],
              r"HF_HUB_OFFLINE is set")


def test_a_full_disk_is_one_line_and_a_rerun_completes_the_file(synthetic_root: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the writes past half of the file fail for real, as a full disk does."""
    out = tmp_path / "captions.jsonl"
    generated = (synthetic_root / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    args = ["caption", "--dataset", "synthetic", "--root", str(synthetic_root), "--out", str(out), "--no-progress",
            "--backend", "template", "--batch-size", "2"]
    limit = sum(len(line) + 1 for line in generated) // 2
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            f"from fba.cli import main\nsys.exit(main({args!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert re.fullmatch(rf"fba caption: error: cannot write {re.escape(str(out))}: File too large; .* free there; "
                        r"the captions written before this batch are kept, and a rerun continues after them", lines[0])
    assert 0 < out.stat().st_size <= limit
    assert main(args) == 0
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == sorted(generated)
