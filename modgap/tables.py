"""The one Markdown-table writer of the package (reports, stage `tables.md` files, the corpus summary)."""
from __future__ import annotations

import pandas as pd


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """`df` as a Markdown pipe table (pandas, through `tabulate`), missing values as "—"."""
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=floatfmt, missingval="—")
