"""What a Compute Engine machine of a role is and costs per hour (USD), for the plan and the cost record.

Prices come from the cluster file's ``prices:`` only (the Cloud Billing
Catalog API is not asked: it needs an API key of its own and prices vCPUs
and GiB, not machine types); a type without an entry has an unknown price,
which the plan says and the cost view counts apart.  With ``spot`` or
``preemptible`` every instance (the orchestrator too) is the ``spot`` market.
"""

from __future__ import annotations

from flambe_cluster.provider import Offer, Role, listed_price


def offer(config, role: Role) -> Offer:
    """What one machine of ``role`` of this configuration is and costs (``prices:``; else an unknown price)."""
    options = config.options
    machine_type = options.orchestrator_type if role is Role.ORCHESTRATOR else options.factories_type
    market = "spot" if options.spot or options.preemptible else "on-demand"  # both roles (see provision.instance_body)
    return Offer(machine_type, market, listed_price(config.prices, machine_type, market))
