"""A synthetic CRM in SQLite: customers, orders, invoices and plans. The tools of the screens query it."""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

PLANS: dict[str, float] = {"basic": 9.99, "plus": 19.99, "premium": 34.99, "family": 44.99}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, dob TEXT NOT NULL, postcode TEXT NOT NULL,
    plan TEXT NOT NULL, tenure_years INTEGER NOT NULL, tier TEXT NOT NULL, balance REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    item TEXT NOT NULL, price REAL NOT NULL, status TEXT NOT NULL, eta TEXT NOT NULL, proof TEXT NOT NULL,
    purchased TEXT NOT NULL, warranty_until TEXT NOT NULL, lines TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    amount REAL NOT NULL, period TEXT NOT NULL, duplicate_of TEXT NOT NULL, lines TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS plans (name TEXT PRIMARY KEY, monthly_fee REAL NOT NULL);
"""


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    dob: str
    postcode: str
    plan: str
    tenure_years: int
    tier: str
    balance: float


class CRM:
    """One SQLite database (a file, or memory by default). Rows are inserted as cases are generated."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        # check_same_thread=False: the REST API serves the sandbox from a thread pool; writes are serialised
        # by the platform's lock.
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.db.executemany("INSERT OR REPLACE INTO plans VALUES (?, ?)", list(PLANS.items()))

    def add_customer(self, c: Customer) -> None:
        self.db.execute(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (c.customer_id, c.name, c.dob, c.postcode, c.plan, c.tenure_years, c.tier, c.balance),
        )

    def add_order(
        self,
        order_id: str,
        customer_id: str,
        item: str,
        price: float,
        status: str,
        eta: str,
        proof: str,
        purchased: str,
        warranty_until: str,
        lines: list[dict[str, str]] | None = None,
    ) -> None:
        """``lines``: the order's table (its items, or its parcel's scans), shown as rows by the lookup."""
        self.db.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order_id, customer_id, item, price, status, eta, proof, purchased, warranty_until,
             json.dumps(lines or [])),
        )  # fmt: skip

    def add_invoice(
        self,
        invoice_id: str,
        customer_id: str,
        amount: float,
        period: str,
        duplicate_of: str,
        lines: list[dict[str, str]] | None = None,
    ) -> None:
        """``lines``: the invoice's charges, shown as rows by the lookup."""
        self.db.execute(
            "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?)",
            (invoice_id, customer_id, amount, period, duplicate_of, json.dumps(lines or [])),
        )

    def fresh_id(self, prefix: str, rng: random.Random) -> str:
        """A new ``PREFIX-dddddd`` id not yet used by an order or invoice (drawn from ``rng``: deterministic)."""
        while True:
            candidate = f"{prefix}-{rng.randrange(10**6):06d}"
            taken = self.db.execute(
                "SELECT 1 FROM orders WHERE order_id = ? UNION SELECT 1 FROM invoices WHERE invoice_id = ?",
                (candidate, candidate),
            ).fetchone()
            if taken is None:
                return candidate

    def customer(self, customer_id: str) -> Customer | None:
        row = self.db.execute("SELECT * FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
        return Customer(*row) if row else None

    def order(self, order_id: str, customer_id: str) -> dict[str, str] | None:
        row = self.db.execute(
            "SELECT order_id, item, price, status, eta, proof, purchased, warranty_until FROM orders "
            "WHERE order_id = ? AND customer_id = ?",
            (order_id, customer_id),
        ).fetchone()
        if row is None:
            return None
        keys = ("order_id", "item", "price", "status", "eta", "proof", "purchased", "warranty_until")
        return {k: (f"{v:.2f}" if k == "price" else str(v)) for k, v in zip(keys, row, strict=True)}

    def lines(self, table: str, key: str, customer_id: str) -> list[dict[str, str]]:
        """The table rows stored with an order or invoice (empty when it has none or does not exist)."""
        column = {"orders": "order_id", "invoices": "invoice_id"}[table]
        row = self.db.execute(
            f"SELECT lines FROM {table} WHERE {column} = ? AND customer_id = ?", (key, customer_id)
        ).fetchone()
        return [dict(line) for line in json.loads(row[0])] if row else []

    def invoice(self, invoice_id: str, customer_id: str) -> dict[str, str] | None:
        row = self.db.execute(
            "SELECT invoice_id, amount, period, duplicate_of FROM invoices WHERE invoice_id = ? AND customer_id = ?",
            (invoice_id, customer_id),
        ).fetchone()
        if row is None:
            return None
        return {"invoice_id": row[0], "amount": f"{row[1]:.2f}", "period": row[2], "duplicate_of": row[3]}

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.close()
