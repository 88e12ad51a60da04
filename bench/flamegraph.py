"""Render py-spy's raw (collapsed) stacks as a flame graph SVG, for docs/performance.md.

    .venv/bin/python -m bench.flamegraph out.svg raw-1.txt [raw-2.txt ...] --title "hold churn"

py-spy writes either an SVG or the raw stacks that bench.profile summarises, not both from one
recording; this turns the raw files (all workers merged) into a static SVG a browser or GitHub
shows: one box per frame, width = share of samples, callers below callees. Idle threads (waiting
for work, a lock or a connection) are left out, so widths are shares of busy time.
"""

import argparse
import html
import sys
import zlib
from pathlib import Path

# Innermost frames of a thread that waits (for work, a lock or a connection): not busy time.
WAITING = ("Condition.wait (", "Queue.get (", "Event.wait (", "Connection._recv (", "wait_conn (")

WIDTH, ROW, FONT, MIN_PX = 1400, 17, 11, 1.0


class Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[str, Node] = {}


def read(files: list[Path]) -> Node:
    root = Node()
    for path in files:
        for line in path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not stack_text or not count_text.isdigit():
                continue
            frames = stack_text.split(";")
            if any(frames[-1].startswith(w) for w in WAITING):
                continue
            count = int(count_text)
            node = root
            node.count += count
            for frame in frames:
                node = node.children.setdefault(frame, Node())
                node.count += count
    return root


def _colour(name: str) -> str:
    # Stable warm colours per function; the service's own frames blue, SQLAlchemy purple.
    h = zlib.crc32(name.encode())
    if "(sqlalchemy/" in name:
        return f"rgb({150 + h % 40},{110 + h % 30},{200 + h % 50})"
    if "/" not in name.split("(")[-1] and name.endswith(")") and "site-packages" not in name:
        return f"rgb({90 + h % 40},{150 + h % 40},{230 - h % 30})"
    return f"rgb({220 + h % 35},{90 + h % 110},{40 + h % 50})"


def render(root: Node, title: str) -> str:
    boxes: list[str] = []
    depth_max = 0

    def walk(node: Node, name: str, x: float, depth: int) -> None:
        nonlocal depth_max
        width = WIDTH * node.count / root.count
        if width < MIN_PX:
            return
        depth_max = max(depth_max, depth)
        share = 100 * node.count / root.count
        label = html.escape(name)
        chars = int(width / (FONT * 0.6))
        text = label if len(name) <= chars else html.escape(name[: max(chars - 2, 0)] + "..") if chars > 3 else ""
        boxes.append(
            f'<g><title>{label} ({share:.1f}%)</title><rect x="{x:.1f}" y="{{y{depth}}}" width="{width:.1f}" '
            f'height="{ROW - 1}" fill="{_colour(name)}" rx="2"/>'
            f'<text x="{x + 3:.1f}" y="{{t{depth}}}">{text}</text></g>'
        )
        child_x = x
        for child_name, child in sorted(node.children.items()):
            walk(child, child_name, child_x, depth + 1)
            child_x += WIDTH * child.count / root.count

    x = 0.0
    for name, child in sorted(root.children.items()):
        walk(child, name, x, 0)
        x += WIDTH * child.count / root.count
    height = (depth_max + 1) * ROW + 40
    body = "\n".join(boxes)
    for depth in range(depth_max + 1):
        y = height - 10 - (depth + 1) * ROW
        body = body.replace(f"{{y{depth}}}", str(y)).replace(f"{{t{depth}}}", str(y + ROW - 5))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">\n'
        f'<rect width="100%" height="100%" fill="#fff"/>\n'
        f'<text x="4" y="18" font-size="14">{html.escape(title)} ({root.count} busy samples; '
        f"hover a box for its share)</text>\n{body}\n</svg>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flamegraph", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("raw", type=Path, nargs="+")
    parser.add_argument("--title", default="flame graph")
    a = parser.parse_args(argv)
    root = read(a.raw)
    if not root.count:
        parser.error("no busy samples in those files")
    a.output.write_text(render(root, a.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
