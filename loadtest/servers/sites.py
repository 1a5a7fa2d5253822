"""The content the embedded HTTP server serves: a home page, byte bodies and pages that look like sites.

Pure and deterministic: the same route always gives the same bytes, so a load
test can check sizes and a response can be cached byte for byte.
"""

from __future__ import annotations

import random
from functools import lru_cache

SITE_PAGES = 100  # /site/0 ... /site/99
# Sizes of the site pages, in bytes, picked by page number: the spread of real home pages.
SITE_PAGE_SIZES = (
    2 * 1024, 5 * 1024, 8 * 1024, 14 * 1024, 22 * 1024,
    35 * 1024, 48 * 1024, 64 * 1024, 90 * 1024, 120 * 1024,
)
PATTERN_SIZE = 1024 * 1024
_FILLER_MIN = len("<!---->\n")  # the comment that pads a page to its exact size
_PATTERN_LINE = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"

INDEX_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>loadtest</title></head>
<body>
<h1>loadtest embedded HTTP server</h1>
<ul>
<li><a href="/bytes/1024">/bytes/N</a>: N bytes</li>
<li><a href="/delay/100">/delay/MS</a>: an answer after MS milliseconds</li>
<li><a href="/status/418">/status/CODE</a>: that status</li>
<li>/echo: the request body, back</li>
<li><a href="/site/0">/site/K</a>: pages that look like sites, K = 0..99</li>
</ul>
</body>
</html>
"""

_WORDS = (
    "load", "latency", "throughput", "request", "server", "client", "cache", "page", "image",
    "script", "style", "news", "sport", "weather", "market", "travel", "music", "video", "shop",
    "price", "offer", "account", "login", "search", "help", "about", "contact", "privacy", "terms",
    "home", "world", "local", "science", "health", "business", "culture", "opinion", "review",
    "guide", "today",
)


@lru_cache(maxsize=1)
def pattern() -> bytes:
    """The body that /bytes/N slices: PATTERN_SIZE bytes of repeated printable lines."""
    return (_PATTERN_LINE * (PATTERN_SIZE // len(_PATTERN_LINE) + 1))[:PATTERN_SIZE]


def site_page_size(page: int) -> int:
    return SITE_PAGE_SIZES[page % len(SITE_PAGE_SIZES)]


@lru_cache(maxsize=SITE_PAGES)
def site_page(page: int) -> bytes:
    """Site page number `page`: HTML shaped like a home page, exactly `site_page_size(page)` bytes."""
    size = site_page_size(page)
    rng = random.Random(page)

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    head = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>Site {page} - {words(3)}</title>\n"
        f'<link rel="stylesheet" href="/static/site{page}.css">\n'
        f'<script src="/static/site{page}.js" defer></script>\n</head>\n<body>\n'
        f'<header><nav>{"".join(f"<a href=/{w}>{w}</a> " for w in rng.sample(_WORDS, 8))}</nav></header>\n<main>\n'
    )
    tail = "</main>\n<footer>&copy; site " + str(page) + "</footer>\n</body>\n</html>\n"
    parts = [head]
    length = len(head) + len(tail)
    article = 0
    while True:
        block = (
            f'<article id="a{article}"><h2>{words(5)}</h2>'
            f'<img src="/img/{page}/{article}.jpg" alt="{words(2)}">'
            f"<p>{words(rng.randint(20, 60))}</p></article>\n"
        )
        if length + len(block) > size - _FILLER_MIN:
            break
        parts.append(block)
        length += len(block)
        article += 1
    parts.append("<!--" + "x" * (size - length - _FILLER_MIN) + "-->\n")
    parts.append(tail)
    return "".join(parts).encode()
