"""What an EC2 machine of a role is and costs per hour (USD), for the plan before ``up`` and the cost record.

The price comes from, in order: the cluster file's ``prices:`` (a
negotiated price, or one for a region the API does not cover); for spot
factories, EC2's spot price history (the highest current price among the
region's zones: an upper bound, since the zone is chosen at launch); for
on-demand machines, the AWS Price List API (``pricing`` in us-east-1,
Linux, shared tenancy).  A source that does not answer (no permission, no
network, a test cloud) gives no price: the plan says "price unknown" and the
cost view counts those hours apart.  Prices are kept per process.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from typing import Any

from flambe_cluster.provider import Offer, listed_price

from . import api

logger = logging.getLogger("flambe_cluster_aws")

#: The region of the AWS Price List API's endpoint.
PRICING_REGION = "us-east-1"

_prices: dict[tuple[str, str, str], float | None] = {}
_lock = threading.Lock()


def offer(config: Any, role: str) -> Offer:
    """What one machine of ``role`` (``"orchestrator"`` or ``"factory"``) of this configuration is and costs."""
    options = config.options
    instance_type = options.instance_type(role)
    market = "spot" if role == "factory" and options.factories_spot else "on-demand"
    price = listed_price(config.prices, instance_type, market)
    if price is None:
        price = _looked_up(options.region_name, instance_type, market)
    return Offer(instance_type, market, price)


def _looked_up(region: str, instance_type: str, market: str) -> float | None:
    key = (region, instance_type, market)
    with _lock:
        if key in _prices:
            return _prices[key]
    try:
        price = _spot(region, instance_type) if market == "spot" else _on_demand(region, instance_type)
    except Exception as exc:  # noqa: BLE001 - any failure of a price source is an unknown price, never a failed up
        logger.debug("no %s price for %s in %s: %s", market, instance_type, region, exc)
        price = None
    with _lock:
        _prices[key] = price
    return price


def _spot(region: str, instance_type: str) -> float | None:
    """The highest latest spot price of ``instance_type`` among the region's zones (Linux), or None."""
    answer = api.client("ec2", region).describe_spot_price_history(
        InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX (Amazon VPC)", "Linux/UNIX"],
        StartTime=datetime.datetime.now(datetime.timezone.utc))
    latest: dict[str, tuple[Any, float]] = {}
    for item in answer.get("SpotPriceHistory", []):
        zone, when = item["AvailabilityZone"], item.get("Timestamp")
        if zone not in latest or (when is not None and str(when) > str(latest[zone][0])):
            latest[zone] = (when, float(item["SpotPrice"]))
    return max((price for _, price in latest.values()), default=None)


def _on_demand(region: str, instance_type: str) -> float | None:
    """The on-demand Linux price of ``instance_type`` in ``region`` from the Price List API, or None."""
    answer = api.client("pricing", PRICING_REGION).get_products(ServiceCode="AmazonEC2", MaxResults=10, Filters=[
        {"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (
            ("instanceType", instance_type), ("regionCode", region), ("operatingSystem", "Linux"),
            ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used"))])
    for item in answer.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None and float(usd) > 0:
                    return float(usd)
    return None
