"""The documentation's drawn pictures: coordinated omission, as docs/img/coordinated-omission.svg.

A server answers in about a millisecond except for one second in which it answers nothing. A closed-model
user sends its next request only when the last one is answered, so it sends one request into the stall and
records one slow sample; a schedule of arrivals (the open model) keeps starting requests through the stall,
and each is measured from when it should have started. Run it again after changing the picture:

    python docs/gen/pictures.py
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "img" / "coordinated-omission.svg"
WIDTH, HEIGHT = 800, 330
LEFT, SECONDS, PX = 70, 5.0, 120.0  # the time axis: x of 0 s, its length, pixels per second
STALL = (1.5, 2.5)  # the second in which the server answers nothing
STEP = 0.1  # the closed user's round trip outside the stall, and the open model's gap between arrivals
CLOSED_Y, OPEN_Y, AXIS_Y = 95, 205, 300
INK, MUTED, SLOW, FAST, SHADE = "#1f2937", "#6b7280", "#dc2626", "#2563eb", "#fde68a"


def x(t: float) -> float:
    return LEFT + t * PX


def text(tx: float, ty: float, body: str, size: int = 13, fill: str = INK, anchor: str = "start",
         weight: str = "normal") -> str:
    return (f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{body}</text>')


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 2) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" stroke-width="{width}"/>'


def closed_lane() -> list[str]:
    """One user: a request every STEP until the stall, one request that waits it out, then on again."""
    parts = [text(LEFT - 8, CLOSED_Y - 34, "Closed model (concurrency: 1): the next request waits for the last",
                  anchor="start", weight="bold")]
    t = 0.0
    samples = slow = 0
    while t < SECONDS - 1e-9:
        if STALL[0] <= t < STALL[1]:  # sent into the stall: answered when it ends
            parts.append(line(x(t), CLOSED_Y, x(STALL[1]), CLOSED_Y, SLOW, 4))
            samples, slow, t = samples + 1, slow + 1, STALL[1]
            continue
        parts.append(line(x(t), CLOSED_Y - 9, x(t), CLOSED_Y + 9, FAST, 2))
        samples += 1
        t = round(t + STEP, 6)
    parts.append(text(x(SECONDS) + 8, CLOSED_Y + 4, f"{slow} slow of {samples}", fill=SLOW))
    parts.append(text(x(STALL[1]) + 6, CLOSED_Y + 26, "one sample of 1 s: p99 does not see the stall", size=12,
                      fill=MUTED))
    return parts


def open_lane() -> list[str]:
    """Arrivals every STEP whatever the latency: each one inside the stall waits until it ends."""
    parts = [text(LEFT - 8, OPEN_Y - 44, "Open model (rate: 10/s): arrivals keep their schedule", weight="bold")]
    t, row = 0.0, 0
    samples = slow = 0
    while t < SECONDS - 1e-9:
        samples += 1
        if STALL[0] <= t < STALL[1]:  # latency counted from the scheduled start, to the end of the stall
            y = OPEN_Y - 30 + row * 6
            parts.append(line(x(t), y, x(STALL[1]), y, SLOW, 3))
            row, slow = row + 1, slow + 1
        else:
            parts.append(line(x(t), OPEN_Y + 30 - 9, x(t), OPEN_Y + 30 + 9, FAST, 2))
        t = round(t + STEP, 6)
    parts.append(text(x(SECONDS) + 8, OPEN_Y + 4, f"{slow} slow of {samples}", fill=SLOW))
    parts.append(text(x(STALL[1]) + 6, OPEN_Y - 14, "each measured from when it should have started:", size=12,
                      fill=MUTED))
    parts.append(text(x(STALL[1]) + 6, OPEN_Y + 2, "1,000 ms, 900 ms, … 100 ms: p99 shows the stall", size=12,
                      fill=MUTED))
    return parts


def axis() -> list[str]:
    parts = [line(x(0), AXIS_Y, x(SECONDS), AXIS_Y, MUTED, 1)]
    for second in range(int(SECONDS) + 1):
        parts.append(line(x(second), AXIS_Y - 4, x(second), AXIS_Y + 4, MUTED, 1))
        parts.append(text(x(second), AXIS_Y + 18, f"{second} s", size=12, fill=MUTED, anchor="middle"))
    return parts


def picture() -> str:
    shade = (f'<rect x="{x(STALL[0]):.1f}" y="40" width="{(STALL[1] - STALL[0]) * PX:.1f}" '
             f'height="{AXIS_Y - 40}" fill="{SHADE}" opacity="0.55"/>')
    label = text((x(STALL[0]) + x(STALL[1])) / 2, 30, "the server answers nothing for 1 s", size=12,
                 anchor="middle", fill="#92400e")
    body = [shade, label, *closed_lane(), *open_lane(), *axis()]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">\n'
            f'<title>Coordinated omission: a closed model sends one request into a stall, an open model ten</title>\n'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>\n' + "\n".join(body) + "\n</svg>\n")


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(picture(), encoding="utf-8")
    print(f"{OUT}: {OUT.stat().st_size:,} bytes")
