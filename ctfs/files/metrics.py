"""metrics: every container's figures in the Prometheus text format, for agents."""

from __future__ import annotations

from ctfs.files.nodes import HostFile
from ctfs.model import metrics
from ctfs.model.caller import Caller
from ctfs.model.host import Host
from ctfs.policy.metrics import render


async def _metrics(host: Host, caller: Caller) -> str:
    containers = [host.containers[ctid] for ctid in host.sorted_ctids()]
    return render(await metrics.families(containers))


HOST_FILES = (HostFile("metrics", _metrics),)
