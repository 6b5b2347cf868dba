"""mkdocs hook: docstrings written with Sphinx roles (:func:`fluxhess.loss`, :class:`~x.Y`)
render as plain code in the API reference, not as the role's literal text."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj):<code>~?")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("<code>", html)
