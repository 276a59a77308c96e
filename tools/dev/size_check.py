#!/usr/bin/env python3
"""Reports every function and every file in src/ and include/ that is longer than its limit.

A file or function past the limit usually holds more than one job, and the next reader pays for
it; the check keeps the tree where issue 26 put it. Function extents come from universal-ctags
(its `end:` field), so the check understands C++ scopes without a compiler. Exits 1 if anything
is over a limit, 2 if ctags cannot be run, 0 otherwise.
"""

import argparse
import os
import subprocess
import sys

DEFAULT_DIRS = ("src", "include")


def parse_args(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..")),
                        help="source tree to check (default: this checkout)")
    parser.add_argument("--function-limit", type=int, default=80,
                        help="most lines a function may have (default: %(default)s)")
    parser.add_argument("--file-limit", type=int, default=600,
                        help="most lines a file may have (default: %(default)s)")
    parser.add_argument("--ctags", default="ctags", help="universal-ctags binary")
    parser.add_argument("dirs", nargs="*", default=list(DEFAULT_DIRS),
                        help="directories under the root to check (default: src include)")
    return parser.parse_args(argv)


def long_files(root, dirs, limit):
    found = []
    for top in dirs:
        for base, subdirs, names in os.walk(os.path.join(root, top)):
            subdirs.sort()
            for name in sorted(names):
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    lines = f.read().count(b"\n")
                if lines > limit:
                    found.append((os.path.relpath(path, root), lines))
    return found


def require_universal(ctags):
    # Exuberant ctags has no end: field: every function would pass unmeasured.
    version = subprocess.run([ctags, "--version"], check=True, stdout=subprocess.PIPE,
                             universal_newlines=True).stdout
    if "Universal Ctags" not in version:
        raise OSError("not universal-ctags (no end: field): " + version.splitlines()[0])


def function_tags(root, dirs, ctags):
    # --sort=no: ctags' sort needs a writable temporary directory, and order is ours to choose.
    cmd = [ctags, "--fields=+ne", "--kinds-C++=f", "--sort=no", "-R", "-f", "-"] + list(dirs)
    out = subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        fields = dict(p.split(":", 1) for p in parts[3:] if ":" in p)
        if "line" not in fields or "end" not in fields:
            continue
        scope = ""
        for kind in ("class", "struct", "namespace"):
            if kind in fields:
                scope = fields[kind].split("::")[-1]
                break
        # Anonymous scopes read as ctags' generated names; they tell the reader nothing.
        name = parts[0] if not scope or scope.startswith("__anon") else scope + "::" + parts[0]
        yield parts[1], int(fields["line"]), int(fields["end"]), name


def long_functions(root, dirs, ctags, limit):
    found = []
    for path, first, last, name in function_tags(root, dirs, ctags):
        lines = last - first + 1
        if lines > limit:
            found.append((path, first, name, lines))
    return sorted(found)


def main(argv):
    args = parse_args(argv)
    dirs = [d for d in args.dirs if os.path.isdir(os.path.join(args.root, d))]
    try:
        require_universal(args.ctags)
        functions = long_functions(args.root, dirs, args.ctags, args.function_limit)
    except (OSError, subprocess.CalledProcessError) as e:
        print("size_check: cannot run %s: %s" % (args.ctags, e), file=sys.stderr)
        return 2
    files = long_files(args.root, dirs, args.file_limit)
    for path, lines in files:
        print("%s: %d lines (limit %d)" % (path, lines, args.file_limit))
    for path, line, name, lines in functions:
        print("%s:%d: function %s is %d lines (limit %d)"
              % (path, line, name, lines, args.function_limit))
    return 1 if files or functions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
