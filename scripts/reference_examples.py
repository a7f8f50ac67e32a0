#!/usr/bin/env python3
"""Extract every request and response JSON example of the CCM API reference into a fixture.

    python3 scripts/reference_examples.py [SEEDS_DIR] [OUTPUT]

SEEDS_DIR defaults to ../shared/seeds beside the repository; OUTPUT to
crates/ccm-client/tests/fixtures/reference_examples.json. The tests read only the fixture (CI
has the repository, not shared/), so run this again when the reference changes and commit the
result; `--check` exits 1 when the fixture is out of date instead of writing it.

The big reference (000_*.txt, text taken from the PDF) is cut into operations at each "URI"
heading ("POST /v1/private-certificates", ...). Within an operation, the JSON objects after
"Example Requests" are request examples, and each "Status code: N" after "Example Responses"
introduces a response example. The newer single pages (the other seed files, one operation
each) replace the big reference's examples for their operation.

The PDF text breaks long lines, also inside JSON strings (a CSR, a certificate), and puts page
headers and footers in the middle of examples. Both are undone here: page furniture lines are
dropped, and a line break inside a JSON string is removed. The PDF's line wrapping also splits
escape sequences (`\\` at the end of a line followed by `\n`); those are joined back as the
escape they were. Nothing else is changed.
"""

import json
import os
import re
import sys

OPERATION = re.compile(r"^\s*(GET|POST|PUT|DELETE|PATCH) (/v\d+/\S+)\s*$")
STATUS = re.compile(r"^\s*Status code: (\d{3})\s*$")
PAGE_FURNITURE = re.compile(
    r"^\s*(Cloud Certificate Manager \(CCM\)|API Reference [0-9A-Z]+ .+"
    r"|Issue \d+ \(\d{4}-\d{2}-\d{2}\) Copyright .*)\s*$"
)
# What follows the response examples: the status code table, or (newer pages) SDK samples.
END_OF_RESPONSES = ("Status Codes", "SDK Sample Code")


def strip_furniture(lines):
    return [l for l in lines if not PAGE_FURNITURE.match(l)]


def json_blocks(text):
    """Yield (offset, parsed) for each top-level JSON object in `text`.

    Scans for `{`, then follows strings and nesting to the matching `}`; a raw line break
    inside a string (the PDF's wrapping) is dropped, and a backslash that ended a line before a
    break continues on the next line."""
    i = 0
    n = len(text)
    while i < n:
        start = text.find("{", i)
        if start < 0:
            return
        depth = 0
        in_str = False
        out = []
        j = start
        while j < n:
            c = text[j]
            if in_str:
                if c == "\\":
                    # An escape: keep it with the next character, skipping a wrap in between.
                    k = j + 1
                    while k < n and text[k] in "\r\n":
                        k += 1
                    if k < n:
                        out.append(c + text[k])
                    j = k + 1
                    continue
                if c in "\r\n":
                    j += 1
                    continue
                if c == '"':
                    in_str = False
                out.append(c)
            else:
                if c == '"':
                    in_str = True
                elif c == "{" or c == "[":
                    depth += 1
                elif c == "}" or c == "]":
                    depth -= 1
                out.append(c)
                if depth == 0:
                    break
            j += 1
        raw = "".join(out)
        try:
            yield start, json.loads(raw)
        except json.JSONDecodeError as e:
            raise SystemExit(f"cannot parse a JSON example at offset {start}: {e}\n{raw[:400]}")
        i = j + 1


def examples_of(lines, operation, source, first_line):
    """The examples in one operation's lines."""
    out = []
    try:
        req_at = next(i for i, l in enumerate(lines) if l.strip() == "Example Requests")
    except StopIteration:
        return out
    resp_at = next(
        (i for i, l in enumerate(lines) if i > req_at and l.strip() == "Example Responses"),
        len(lines),
    )
    end = next(
        (i for i, l in enumerate(lines) if i > resp_at and l.strip() in END_OF_RESPONSES),
        len(lines),
    )
    # Requests: the JSON bodies (the request lines before them only name the operation again).
    req_lines = lines[req_at + 1 : resp_at]
    text = "\n".join(req_lines)
    line_starts = [0]
    for l in req_lines:
        line_starts.append(line_starts[-1] + len(l) + 1)
    for offset, body in json_blocks(text):
        line_no = max(k for k, s in enumerate(line_starts) if s <= offset)
        out.append(
            {
                "operation": operation,
                "kind": "request",
                "source": f"{source}:{first_line + req_at + 1 + line_no + 1}",
                "json": body,
            }
        )
    # Responses: one JSON body per status code.
    i = resp_at + 1
    while i < end:
        m = STATUS.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < end and not STATUS.match(lines[j]):
            j += 1
        blocks = list(json_blocks("\n".join(lines[i + 1 : j])))
        if len(blocks) > 1:
            raise SystemExit(f"{source}:{first_line + i + 1}: several bodies for one status")
        for _, body in blocks:
            out.append(
                {
                    "operation": operation,
                    "kind": "response",
                    "status": int(m.group(1)),
                    "source": f"{source}:{first_line + i + 1}",
                    "json": body,
                }
            )
        i = j
    return out


def operations(lines):
    """(operation, first line index, lines) for each "URI" heading of a seed file."""
    starts = []
    for i, l in enumerate(lines):
        if l.strip() != "URI":
            continue
        for k in range(i + 1, min(i + 4, len(lines))):
            m = OPERATION.match(lines[k])
            if m:
                starts.append((i, f"{m.group(1)} {m.group(2)}"))
                break
    # A section whose heading got lost in the PDF text ("URI" on the same line as other
    # words) is found by its own "URI" line too: fall back to " URI" with trailing text.
    for i, l in enumerate(lines):
        if l.strip() == "URI" or not l.strip().endswith("URI"):
            continue
        for k in range(i + 1, min(i + 6, len(lines))):
            m = OPERATION.match(lines[k])
            if m:
                starts.append((i, f"{m.group(1)} {m.group(2)}"))
                break
    starts.sort()
    for n, (i, op) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        yield op, i, lines[i:end]


def extract(seeds):
    files = sorted(f for f in os.listdir(seeds) if f.endswith(".txt"))
    big, newer = files[0], files[1:]
    by_op = {}
    order = []

    def add(fname, exclusive):
        with open(os.path.join(seeds, fname), encoding="utf-8") as fh:
            lines = strip_furniture(fh.read().splitlines())
        seen = set()
        for op, first, op_lines in operations(lines):
            found = examples_of(op_lines, op, fname, first)
            if exclusive:
                if op in seen:
                    raise SystemExit(f"{fname}: more than one operation")
                seen.add(op)
                by_op[op] = found  # a newer page replaces the big reference's examples
            else:
                by_op.setdefault(op, []).extend(found)
            if op not in order:
                order.append(op)

    add(big, exclusive=False)
    for f in newer:
        add(f, exclusive=True)
    return [e for op in order for e in by_op[op]]


def main():
    args = [a for a in sys.argv[1:] if a != "--check"]
    check = "--check" in sys.argv[1:]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seeds = args[0] if args else os.path.join(repo, "..", "shared", "seeds")
    output = (
        args[1]
        if len(args) > 1
        else os.path.join(repo, "crates/ccm-client/tests/fixtures/reference_examples.json")
    )
    examples = extract(seeds)
    text = json.dumps(examples, indent=2, ensure_ascii=False) + "\n"
    if check:
        with open(output, encoding="utf-8") as fh:
            if fh.read() != text:
                print(f"{output} is out of date: run {sys.argv[0]}", file=sys.stderr)
                sys.exit(1)
        return
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(text)
    ops = len({e["operation"] for e in examples})
    req = sum(e["kind"] == "request" for e in examples)
    print(f"{len(examples)} examples ({req} requests) of {ops} operations -> {output}")


if __name__ == "__main__":
    main()
