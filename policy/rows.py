"""The table row the customer names: the order line of the item they say is damaged, the invoice line of the
charge they dispute.

A row is named when one of its word values (letters and spaces, such as an item or a charge) has every word among
the words of the customer's messages the policy reads (the last ``CHAT_WINDOW``:
``policy.values.said_by_customer``), typos allowed (``policy.words.names``, the record check's matcher). The prompt marks such rows
(``SerialConfig.named_rows``) and, where exactly one row is named, its values are slots of their own
(``row.<panel>.named.<column>``, ``policy.values.value_sources``), as the latest row's are: a refund amount or a
dispute note copies that row's price, and a template that says "the named row" is one template whichever line of
the table it is, where a row number differs from case to case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policy.words import WORD_VALUE, names


def _names(value: str, words: set[str]) -> bool:
    return WORD_VALUE.fullmatch(value.lower()) is not None and names(value, words)


def named_rows(rows: Sequence[Mapping[str, str]], words: set[str]) -> list[bool]:
    """Which of ``rows`` the customer's ``words`` (``policy.values.said_by_customer``) name. All False when every
    row is: a mark on each row says nothing."""
    if not words:
        return [False] * len(rows)
    named = [any(_names(value, words) for value in row.values()) for row in rows]
    return [False] * len(rows) if all(named) else named


def named_row(rows: Sequence[Mapping[str, str]], words: set[str]) -> int | None:
    """The index of the one row the customer's ``words`` name; None when none or several are."""
    named = named_rows(rows, words)
    return named.index(True) if named.count(True) == 1 else None
