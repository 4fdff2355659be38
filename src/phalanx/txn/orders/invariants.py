"""The invariants checked after every run of the order flow.

* every order ended: ``completed`` or ``cancelled``, nothing left ``pending``;
* no order paid but not shipped or refunded, and no refund of a shipped order;
* a completed order is reserved, charged and shipped; a cancelled one holds nothing
  (its reservation released, its charge refunded, no live shipment);
* inventory is never negative and is conserved: the start stock minus what live
  reservations hold;
* no double charge: at most one charge per order.
"""

from __future__ import annotations

from phalanx.txn.orders.services import ITEMS, STOCK_START, Shop

__all__ = ["check_invariants"]


def check_invariants(shop: Shop) -> list[str]:
    """The violated invariants, as sentences; empty when all hold."""
    problems: list[str] = []
    orders = dict(shop.orders.conn.execute("SELECT id, status FROM orders").fetchall())
    charges: dict[str, list[int]] = {}
    for order_id, refunded in shop.payments.conn.execute("SELECT order_id, refunded FROM charges"):
        charges.setdefault(order_id, []).append(refunded)
    shipped = {
        order_id
        for (order_id,) in shop.shipping.conn.execute(
            "SELECT order_id FROM shipments WHERE cancelled = 0"
        )
    }
    reserved = {
        order_id
        for (order_id,) in shop.inventory.conn.execute(
            "SELECT order_id FROM reservations WHERE released = 0"
        )
    }
    for order_id, status in sorted(orders.items()):
        paid = [r for r in charges.get(order_id, []) if r == 0]
        if len(charges.get(order_id, [])) > 1:
            problems.append(f"{order_id}: charged {len(charges[order_id])} times")
        if status not in ("completed", "cancelled"):
            problems.append(f"{order_id}: ended {status!r}")
        if paid and order_id not in shipped:
            problems.append(f"{order_id}: paid but neither shipped nor refunded")
        if status == "completed" and not (paid and order_id in shipped and order_id in reserved):
            problems.append(f"{order_id}: completed without reservation, charge and shipment")
        if status == "cancelled" and (paid or order_id in shipped or order_id in reserved):
            problems.append(f"{order_id}: cancelled but still holds a charge, shipment or stock")
    for item in ITEMS:
        (qty,) = shop.inventory.conn.execute(
            "SELECT qty FROM stock WHERE item = ?", (item,)
        ).fetchone()
        (held,) = shop.inventory.conn.execute(
            "SELECT coalesce(sum(qty), 0) FROM reservations WHERE item = ? AND released = 0",
            (item,),
        ).fetchone()
        if qty < 0:
            problems.append(f"stock of {item} is negative ({qty})")
        if qty != STOCK_START - held:
            problems.append(f"stock of {item} is {qty}, expected {STOCK_START - held}")
    return problems
