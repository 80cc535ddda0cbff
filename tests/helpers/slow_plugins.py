"""Third-party plugin distributions written into a directory for a gateway's PYTHONPATH."""

from __future__ import annotations

from pathlib import Path


def write_plugin(site: Path, name: str, source: str) -> None:
    """Install module ``name`` with ``source`` as a `picofleet` entry-point plugin in ``site``."""
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[picofleet]\n{name} = {name}\n")
    (site / f"{name}.py").write_text(source)


SLOW_CLOSE = '''
import time
from picofleet.gateway.hookspecs import hookimpl

@hookimpl(tryfirst=True)
def picofleet_close_port(board, port):
    """Close ports slowly, as a stuck USB stack can."""
    time.sleep(0.5)
    port.close()
    return True
'''

FAILING_SOURCES = '''
from picofleet.gateway.hookspecs import hookimpl

@hookimpl
def picofleet_discovery_sources(config):
    """Fails when the gateway asks for discovery sources."""
    raise RuntimeError("no sources today")
'''
