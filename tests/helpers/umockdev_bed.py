"""An umockdev testbed controlled over stdin, for hotplug tests (run it with /usr/bin/python3).

It needs PyGObject with UMockdev (Debian: python3-gi, gir1.2-umockdev-1.0), which the project's
venv does not have; hence a separate process. It re-executes itself under
``LD_PRELOAD=libumockdev-preload.so.0`` when started without it: umockdev synthesises a uevent
with libudev reading the device from the *testbed's* /sys, which only the preload library
redirects, and it emits ``add`` events by itself only inside the mock environment.

Protocol (one line each way):

* first line out: the testbed's directory (``UMOCKDEV_DIR``). A program that runs with
  ``LD_PRELOAD=libumockdev-preload.so.0`` and this ``UMOCKDEV_DIR`` sees the testbed's /sys
  and /dev, and its udev netlink monitors receive the uevents below (the preload library turns
  their netlink socket into a Unix socket ``UMOCKDEV_DIR/event<fd>``, to which the testbed
  sends every uevent).
* ``add FILE``: add the devices of an umockdev-record description; one ``add`` uevent per
  device. Devices are added parents first, as the kernel announces them (umockdev-record writes
  children first), so that a listener finds a new tty's USB parent in sysfs.
* ``remove SYSPATH``: the devices at and below SYSPATH are removed, children first, each with
  a ``remove`` uevent. (umockdev before 0.18.4 removes neither with uevents nor its children's
  /sys/class, /sys/bus and /dev entries, so that a device could not be added again at the same
  place: hence one removal per device, and uevents sent here when umockdev does not send them.)
* ``uevent SYSPATH ACTION``: one uevent.

Every command is answered ``ok`` or ``error <reason>``. End of input ends the testbed.
"""

from __future__ import annotations

import os
import subprocess
import sys

PRELOAD = "libumockdev-preload.so.0"


def _ensure_preloaded() -> None:
    if PRELOAD not in os.environ.get("LD_PRELOAD", ""):
        preload = ":".join(filter(None, [PRELOAD, os.environ.get("LD_PRELOAD")]))
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": preload})


def _removal_sends_uevents() -> bool:
    """Does this umockdev's ``remove_device`` emit ``remove`` uevents (0.18.4 and later)?"""
    try:
        output = subprocess.run(
            ["umockdev-run", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        version = tuple(int(part) for part in output.strip().split(".")[:3])
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return version >= (0, 18, 4)


def _paragraphs(text: str) -> list[str]:
    return [block.strip() + "\n" for block in text.split("\n\n") if block.strip()]


def _devices_below(root: str, syspath: str) -> list[str]:
    """SYSPATH and the devices below it, deepest first (directories with a ``uevent`` file)."""
    found = []
    for directory, subdirs, files in os.walk(root + syspath, followlinks=False):
        subdirs[:] = [name for name in subdirs if not os.path.islink(os.path.join(directory, name))]
        if "uevent" in files:
            found.append(directory[len(root) :])
    return sorted(found, key=lambda path: path.count("/"), reverse=True)


def main() -> None:
    """Serve the protocol of the module docstring."""
    _ensure_preloaded()
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    # our answers go to the original stdout; anything GLib or umockdev print goes to stderr
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    send_remove_uevents = not _removal_sends_uevents()
    testbed = UMockdev.Testbed.new()
    root = testbed.get_root_dir()
    print(root, file=answers)
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        try:
            if command == "add":
                with open(rest, encoding="utf-8") as handle:
                    for paragraph in reversed(_paragraphs(handle.read())):
                        testbed.add_from_string(paragraph)
            elif command == "remove":
                for syspath in _devices_below(root, rest):
                    if send_remove_uevents:
                        testbed.uevent(syspath, "remove")
                    testbed.remove_device(syspath)
            elif command == "uevent":
                syspath, action = rest.rsplit(" ", 1)
                testbed.uevent(syspath, action)
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as error:
            print(f"error {type(error).__name__}: {error}", file=answers)
        else:
            print("ok", file=answers)


if __name__ == "__main__":
    main()
