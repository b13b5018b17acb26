"""A disk that fills up or turns read-only while a run writes (a small tmpfs, filled during the student's stage): one line, exit 2, no traceback from any thread (TensorBoard's writer
included), and `--resume` once there is room again ends with the uninterrupted run's weights."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from test_faults import command, env, same_as_reference, setup  # noqa: F401  (the module's fixture)

# Inside the student stage, after the teacher's: checkpoints, logs and records are all being written.
TRIGGERS = ("stages/distill/checkpoints/step_3",)


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    """A 64 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path_factory.mktemp("disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "distill-test", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no permission)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write into ``folder`` until the file system says it is full."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    block = b"\0" * (1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        while True:  # the last partial megabyte too
            try:
                os.write(fd, b"\0" * 4096)
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_a_disk_filling_up_mid_run_is_one_line_and_resumes(setup, small_disk, trigger):  # noqa: F811
    tmp, recipe, reference, _ = setup
    out = small_disk / trigger.split("/")[1]
    proc = subprocess.Popen(
        command(recipe, out), env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (out / trigger).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the trigger"
    filler = fill(small_disk)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("distill: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], stderr[-3000:]
    assert not (out / "complete.json").exists()

    filler.unlink()
    done = subprocess.run(
        command(recipe, out, "--resume"), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not same_as_reference(out, reference)


@pytest.fixture()
def ext4_disk(tmp_path):
    """A 64 MB ext4 file system on a loop device, mounted with ``errors=remount-ro``, and a way to
    make the kernel turn it read-only as a failing disk does (ext4's ``trigger_fs_error``). Root only;
    skipped where loop devices or ext4 are not available."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    mounted = made.returncode == 0 and (
        subprocess.run(
            ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount an ext4 loop device here (not root, or no loop devices)")
    device = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True, text=True
    ).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        subprocess.run(["umount", str(mount)], capture_output=True)
        pytest.skip("this kernel cannot inject an ext4 error")

    def remount_writable():
        assert subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0
        subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True)
        assert subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode == 0

    yield mount, trigger, remount_writable
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_turning_read_only_mid_run_is_one_line_and_resumes(setup, ext4_disk):  # noqa: F811
    tmp, recipe, reference, _ = setup
    mount, trigger, remount_writable = ext4_disk
    out = mount / "run"
    proc = subprocess.Popen(
        command(recipe, out), env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (out / TRIGGERS[0]).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the trigger"
    trigger.write_text("distill test: the disk fails\n")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("distill: error:")]
    assert len(errors) == 1 and "Read-only file system" in errors[0], stderr[-3000:]

    remount_writable()
    assert not (out / "complete.json").exists()
    done = subprocess.run(
        command(recipe, out, "--resume"), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not same_as_reference(out, reference)
