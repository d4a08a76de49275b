#!/usr/bin/env python3
"""Regenerates the golden renders of the chat-template differential test.

For every template in tests/fixtures/chat-templates/*.jinja (copies of
../shared/chat-templates) and every conversation in
tests/fixtures/chat-templates/conversations.json, renders the template the way
Hugging Face transformers does, with ../shared/tools/chat_reference.py (Jinja2
in an ImmutableSandboxedEnvironment), and writes
tests/fixtures/chat-templates/goldens/NAME.json: one {"text": ...} or
{"error": ...} per conversation. strftime_now is pinned to the time in
conversations.json ("now", UTC) so the goldens do not change by the day; the
C++ test passes the same time to the project's renderer.

It also renders the engine's own differential cases,
tests/fixtures/jinja/snippets.json (small templates with their variables),
into tests/fixtures/jinja/snippets-goldens.json.

Usage: scripts/gen-chat-goldens.py [--copy-templates]
  --copy-templates  first refresh the .jinja copies from ../shared/chat-templates
"""
import json
import os
import shutil
import sys
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "chat-templates")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if not os.path.isdir(SHARED):  # a worktree beside the main checkout
    SHARED = os.path.join(os.path.dirname(os.path.dirname(ROOT)), "shared")


def main():
    tools_dir = os.path.join(SHARED, "tools")
    if not os.path.exists(os.path.join(tools_dir, "chat_reference.py")):
        sys.exit("../shared/tools/chat_reference.py is needed to render the goldens")
    sys.path.insert(0, tools_dir)
    import chat_reference

    if "--copy-templates" in sys.argv:
        src = os.path.join(SHARED, "chat-templates")
        for name in sorted(os.listdir(src)):
            if name.endswith(".jinja"):
                shutil.copyfile(os.path.join(src, name), os.path.join(FIXTURES, name))

    spec = json.load(open(os.path.join(FIXTURES, "conversations.json"), encoding="utf-8"))
    now = datetime.fromtimestamp(spec["now"], tz=timezone.utc).replace(tzinfo=None)
    chat_reference.strftime_now = lambda fmt: now.strftime(fmt)

    out_dir = os.path.join(FIXTURES, "goldens")
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(FIXTURES)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(FIXTURES, name), encoding="utf-8", newline="") as f:
            source = f.read()
        renders = chat_reference.render_all(source, spec["conversations"])
        with open(os.path.join(out_dir, name[:-len(".jinja")] + ".json"), "w", encoding="utf-8") as f:
            json.dump(renders, f, ensure_ascii=False, indent=1)
            f.write("\n")
        ok = sum(1 for r in renders if "text" in r)
        print(f"{name}: {ok}/{len(renders)} rendered")

    jinja_dir = os.path.join(ROOT, "tests", "fixtures", "jinja")
    snippets = json.load(open(os.path.join(jinja_dir, "snippets.json"), encoding="utf-8"))
    renders = [chat_reference.render_all(s["template"], [{"messages": [], "extra": s["vars"]}])[0]
               for s in snippets]
    with open(os.path.join(jinja_dir, "snippets-goldens.json"), "w", encoding="utf-8") as f:
        json.dump(renders, f, ensure_ascii=False, indent=1)
        f.write("\n")
    ok = sum(1 for r in renders if "text" in r)
    print(f"snippets: {ok}/{len(renders)} rendered")


if __name__ == "__main__":
    main()
