"""The guide's order flow as a reference system: OrderService, InventoryService,
PaymentService and ShippingService, run as an orchestrated saga or as a choreography, with
failure switches, crashes, and the invariants checked after every run.

:func:`run_orders` is what ``phalanx txn orders`` (and a ``phalanx demo orders``) runs.
"""

from phalanx.txn.orders.invariants import check_invariants
from phalanx.txn.orders.run import CRASHES, MODES, OrdersReport, run_orders
from phalanx.txn.orders.services import Faults, Shop

__all__ = ["CRASHES", "MODES", "Faults", "OrdersReport", "Shop", "check_invariants", "run_orders"]
