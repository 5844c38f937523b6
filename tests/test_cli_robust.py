"""The `loco` CLI where it used to go wrong: outputs into FIFOs (replaced by regular files before),
exports into the model's own folder (which destroyed the model), configs claiming absurd sizes
(which exhausted memory), --out folders that are files (found only after the whole run), write
errors on standard output (lost), signed seeds (" -1" was 2^64 - 1), the scheduler model_index.json
names (ignored), unsupported pipelines (a misleading message) and options that do not apply
(silently ignored). Every case is one clear line on stderr, and nothing of the model is touched.
Models are copied to a temporary folder before they are altered."""
import hashlib
import json
import os
import resource
import stat
import struct
import subprocess
import threading
import time

import pytest

from test_cli import FIX, LOCO, ROOT, SD1, copy_model, one_line_error, run

CLIP = FIX / "models" / "clip-tiny"


def edit_json(path, **changes):
    doc = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(json.dumps(doc))


def digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- outputs into FIFOs and folders ----------------------------------------------------------------


class FifoReader:
    """A named pipe read on a thread until its last writer closes. The test holds a write end of its own
    until fifo.finish(), so a loco that never opens the pipe cannot leave the reader waiting forever."""

    def __init__(self, path):
        os.mkfifo(path)
        self.rd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.keep = os.open(path, os.O_WRONLY)
        os.set_blocking(self.rd, True)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while chunk := os.read(self.rd, 1 << 16):
            self.data += chunk

    def finish(self):
        os.close(self.keep)
        self.thread.join(30)
        os.close(self.rd)
        return bytes(self.data)


def test_outputs_into_fifos_are_written_in_place(tmp_path):
    """`--output` and `--latents-out` naming FIFOs (as /dev/stdout or a pipe another program reads):
    the bytes go into the pipe and the pipe stays a pipe (it was replaced by a regular file)."""
    img, lat = tmp_path / "img.png", tmp_path / "lat.safetensors"
    readers = [FifoReader(img), FifoReader(lat)]
    r = run("generate", "--model", SD1, "--prompt", "a red cube", "--steps", "1", "--output", img,
            "--latents-out", lat, "--quiet", timeout=120)
    png, st = (x.finish() for x in readers)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(img).st_mode) and stat.S_ISFIFO(os.lstat(lat).st_mode)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100
    n = struct.unpack("<Q", st[:8])[0]
    assert {"initial_latents", "latents"} <= set(json.loads(st[8:8 + n]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "lat.safetensors"]  # no temporaries left


def test_output_that_is_a_folder_fails_before_the_run(tmp_path):
    for opt in ("--output", "--latents-out"):
        args = {"--output": tmp_path / "o.png", "--latents-out": tmp_path / "l.safetensors"}
        args[opt] = tmp_path
        t0 = time.monotonic()
        r = run("generate", "--model", SD1, "--prompt", "x", "--output", args["--output"], "--latents-out",
                args["--latents-out"], "--quiet")
        one_line_error(r, opt, str(tmp_path), "is a folder")
        assert time.monotonic() - t0 < 10
    assert list(tmp_path.iterdir()) == []


# ---- exports never into the model ------------------------------------------------------------------


def test_export_folder_never_the_models_own(tmp_path):
    """`loco edit --export-folder` at the model's folder emptied its tokenizer files and overwrote its
    weights; a folder inside it or containing it is refused as well, and the model is untouched."""
    m = copy_model(tmp_path)
    before = digests(m)
    for target, how in [(m, "is the model's folder"), (m / "edited", "is inside the model's folder"),
                        (tmp_path, "contains the model's folder")]:
        r = run("edit", "locoedit", "--model", m, "--concept", "van gogh", "--start", "6", "--out",
                tmp_path / "out", "--export-folder", target, "--no-images", "--quiet")
        one_line_error(r, f"{target} {how} {m}")
    assert digests(m) == before
    assert not (m / "edited").exists()


def test_export_replaces_symlinks_in_its_folder_never_their_targets(tmp_path):
    # a symlink the export folder already holds, pointing into the base model (another component's
    # file than the one it stands for): the export replaces the link, the model stays as it was
    m = copy_model(tmp_path)
    before = digests(m)
    e = tmp_path / "export"
    (e / "vae").mkdir(parents=True)
    os.symlink(m / "unet" / "config.json", e / "vae" / "config.json")
    r = run("edit", "locoedit", "--model", m, "--concept", "van gogh", "--start", "6", "--out", tmp_path / "out",
            "--export-folder", e, "--no-images", "--quiet")
    assert r.returncode == 0, r.stderr
    assert digests(m) == before
    assert not (e / "vae" / "config.json").is_symlink()
    assert json.loads((e / "vae" / "config.json").read_text()) == json.loads((m / "vae" / "config.json").read_text())


# ---- configs claiming absurd sizes -------------------------------------------------------------------


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def run_limited(*args):
    """loco with 2 GB of address space: a config must be refused before it costs memory."""
    t0 = time.monotonic()
    r = subprocess.run([str(LOCO), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       preexec_fn=limit_memory)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("component,key,value", [
    ("text_encoder", "num_hidden_layers", 10_000_000),
    ("text_encoder", "num_hidden_layers", 1 << 30),
    ("unet", "transformer_layers_per_block", 100_000),
    ("unet", "transformer_layers_per_block", 1_000_000),
    ("unet", "sample_size", 1 << 28),
    ("unet", "sample_size", 1 << 30),
    ("vae", "latent_channels", 1 << 30),
])
def test_huge_config_sizes_fail_fast(tmp_path, component, key, value):
    m = copy_model(tmp_path)
    edit_json(m / component / "config.json", **{key: value})
    # the CPU backend: a GPU runtime reserves more address space than the limit allows
    commands = [("generate", "--model", m, "--prompt", "x", "--output", tmp_path / "o.png", "--device", "cpu",
                 "--quiet")]
    if component != "vae":  # inspect reads the UNet and text-encoder configs, not the VAE's
        commands.append(("inspect", m))
    for cmd in commands:
        r, secs = run_limited(*cmd)
        one_line_error(r, f"{component}/config.json", key, str(value), "limit")
        assert secs < 20, f"{cmd[0]} took {secs:.1f} s"


def test_huge_block_out_channels(tmp_path):
    """2^29 channels in the first block overflowed 4 x channels (the time embedding width)."""
    m = copy_model(tmp_path)
    cfg_path = m / "unet" / "config.json"
    boc = json.loads(cfg_path.read_text())["block_out_channels"]
    edit_json(cfg_path, block_out_channels=[1 << 29] + boc[1:])
    r, _ = run_limited("inspect", m)
    one_line_error(r, "unet/config.json", "block_out_channels", str(1 << 29), "limit")


# ---- output folders checked before the work -----------------------------------------------------------


@pytest.mark.parametrize("cmd", [
    ["trace", "--model", SD1, "--clip", CLIP, "--prompt", "a house in the style of van gogh", "--subject", "van gogh"],
    ["localize", "--model", SD1, "--clip", CLIP, "--prompt", "a house in the style of van gogh", "--altered",
     "a house"],
    ["edit", "locoedit", "--model", SD1, "--concept", "van gogh"],
])
def test_out_that_is_a_file_fails_before_any_work(tmp_path, cmd):
    f = tmp_path / "f"
    f.write_text("keep me")
    t0 = time.monotonic()
    r = run(*cmd, "--out", f, "--quiet")
    one_line_error(r, "--out", str(f), "not a folder")
    assert time.monotonic() - t0 < 10
    assert f.read_text() == "keep me"


# ---- write errors on standard output ----------------------------------------------------------------


def dev_full_usable():
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


@pytest.mark.skipif(not dev_full_usable(), reason="no /dev/full character device")
@pytest.mark.parametrize("args", [("noise", "--seed", "1", "--shape", "10"), ("inspect", SD1)])
def test_stdout_write_errors_are_reported(args):
    with open("/dev/full", "w") as full:
        r = subprocess.run([str(LOCO), *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=60, cwd=ROOT)
    one_line_error(r, f"loco {args[0]}: cannot write to standard output", "No space left")
    assert r.returncode == 1


# ---- numbers and options -------------------------------------------------------------------------


def test_seed_must_be_plain_digits(tmp_path):
    """strtoull skips white space and negates a '-' after it: " -1" was taken as 2^64 - 1."""
    for seed in (" -1", "\t-1", " 1", "-1", "+1", "1 "):
        one_line_error(run("noise", "--seed", seed, "--shape", "2"), "--seed")
        one_line_error(run("generate", "--model", SD1, "--prompt", "x", "--seed", seed, "--output",
                           tmp_path / "o.png"), "--seed")


@pytest.mark.parametrize("cmd,opt", [
    (["generate"], "--seed"), (["noise"], "--shape"), (["inspect", SD1], "--config-dir"), (["trace"], "--prompt"),
    (["localize"], "--altered"), (["edit", "locoedit"], "--concept"),
])
def test_missing_value_and_unknown_option_are_one_line(cmd, opt):
    r = run(*cmd, opt)
    one_line_error(r, f"option '{opt}' needs a value")
    assert r.returncode == 2
    r = run(*cmd, "--frobnicate=3")
    one_line_error(r, "unknown option '--frobnicate'")
    assert r.returncode == 2


def test_options_that_do_not_apply(tmp_path):
    single = FIX / "models" / "sd1-tiny.safetensors"
    one_line_error(run("generate", "--model", SD1, "--config-dir", SD1, "--prompt", "x", "--output",
                       tmp_path / "o.png", "--quiet"), "--config-dir", "single-file")
    one_line_error(run("inspect", SD1, "--config-dir", SD1), "--config-dir", "single-file")
    one_line_error(run("generate", "--model", single, "--variant", "fp16", "--prompt", "x", "--output",
                       tmp_path / "o.png", "--quiet"), "--variant", "diffusers folders")


def test_karras_only_with_schedulers_that_have_it(tmp_path):
    out = tmp_path / "o.png"
    for sched in ("pndm", "ddim", "ddpm", "euler_a"):
        one_line_error(run("generate", "--model", SD1, "--prompt", "x", "--steps", "2", "--scheduler", sched,
                           "--karras", "--output", out, "--quiet"), "--karras", sched)
    # sd1-tiny's own scheduler is PNDM
    one_line_error(run("generate", "--model", SD1, "--prompt", "x", "--steps", "2", "--karras", "--output", out,
                       "--quiet"), "--karras", "pndm")
    assert not out.exists()
    for sched in ("euler", "dpmpp_2m"):
        r = run("generate", "--model", SD1, "--prompt", "x", "--steps", "2", "--scheduler", sched, "--karras",
                "--output", out, "--quiet")
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("cmd", [["generate"], ["trace"], ["localize"], ["edit"]])
def test_size_help_names_the_multiple(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0
    line = next(l for l in r.stdout.splitlines() if "--width" in l)
    assert "multiple" in r.stdout[r.stdout.index(line):][:300]


# ---- the scheduler model_index.json names -------------------------------------------------------------


def test_model_index_scheduler_class_is_the_default(tmp_path):
    """diffusers instantiates model_index.json's scheduler class with scheduler_config.json's values,
    whatever the config's own _class_name says (PNDMScheduler here)."""
    m = copy_model(tmp_path)
    edit_json(m / "model_index.json", scheduler=["diffusers", "DDIMScheduler"])
    assert json.loads((m / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    images = {}
    for name, extra in [("default", []), ("ddim", ["--scheduler", "ddim"]), ("pndm", ["--scheduler", "pndm"])]:
        out = tmp_path / f"{name}.png"
        r = run("generate", "--model", m, "--prompt", "a red cube", "--steps", "3", "--output", out, "--quiet", *extra)
        assert r.returncode == 0, r.stderr
        images[name] = out.read_bytes()
    assert images["default"] == images["ddim"]
    assert images["default"] != images["pndm"]


def test_unsupported_scheduler_class_needs_scheduler_option(tmp_path):
    m = copy_model(tmp_path)
    edit_json(m / "model_index.json", scheduler=["diffusers", "LMSDiscreteScheduler"])
    out = tmp_path / "o.png"
    one_line_error(run("generate", "--model", m, "--prompt", "x", "--steps", "2", "--output", out, "--quiet"),
                   "'LMSDiscreteScheduler'", "PNDMScheduler", "--scheduler")
    assert not out.exists()
    r = run("generate", "--model", m, "--prompt", "x", "--steps", "2", "--scheduler", "euler", "--output", out,
            "--quiet")
    assert r.returncode == 0, r.stderr


# ---- pipelines loco does not run ------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels,what", [(9, "inpainting"), (8, "instruct-pix2pix")])
def test_image_conditioned_unets_say_so(tmp_path, in_channels, what):
    m = copy_model(tmp_path)
    edit_json(m / "unet" / "config.json", in_channels=in_channels)
    one_line_error(run("generate", "--model", m, "--prompt", "x", "--output", tmp_path / "o.png", "--quiet"),
                   f"unet in_channels {in_channels}", what, "needs 4")


def test_model_index_without_unet_says_so(tmp_path):
    m = copy_model(tmp_path)
    edit_json(m / "model_index.json", unet=None)
    one_line_error(run("generate", "--model", m, "--prompt", "x", "--output", tmp_path / "o.png", "--quiet"),
                   "model_index.json has no unet entry")


def test_single_file_of_another_architecture_names_config_dir(tmp_path):
    # the tiny single file is not SD 1.5's standard architecture: without --config-dir its
    # shapes miss the standard configs, and the error says what to give
    r = run("generate", "--model", FIX / "models" / "sd1-tiny.safetensors", "--prompt", "x", "--steps", "1",
            "--output", tmp_path / "x.png")
    one_line_error(r, "was expected", "--config-dir")
