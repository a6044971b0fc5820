#!/usr/bin/env python3
"""Compiles the generated Swift C header and links it against the SDK library with a
program that references every function the header declares, then runs it. A symbol the
header promises but the library lacks (a broken export) fails the link.

usage: check_swift_header.py HEADER LIBRARY_DIR [LIBRARY_NAME]
"""
import os
import re
import subprocess
import sys
import tempfile

header, lib_dir = sys.argv[1], sys.argv[2]
lib_name = sys.argv[3] if len(sys.argv) > 3 else "tidings_bindings"
text = open(header).read()
# Function declarations: a return type at the start of a line, then the name and "(".
# Callback typedefs ("typedef void (*Name)(...)") do not match.
names = sorted(set(re.findall(
    r"^(?!typedef)[A-Za-z_][A-Za-z0-9_ \*]*?\b((?:uniffi|ffi)_[A-Za-z0-9_]+)\s*\(",
    text, re.M)))
if not names:
    sys.exit("no functions found in " + header)
with tempfile.TemporaryDirectory() as d:
    src = os.path.join(d, "check.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include "%s"\n' % os.path.abspath(header))
        f.write("static void *const symbols[] = {\n")
        f.writelines("    (void *)&%s,\n" % n for n in names)
        f.write("};\n")
        f.write("int main(void) {\n"
                "    size_t n = sizeof(symbols) / sizeof(symbols[0]);\n"
                "    for (size_t i = 0; i < n; i++) if (!symbols[i]) return 1;\n"
                '    printf("%zu symbols resolved\\n", n);\n'
                "    return 0;\n}\n")
    exe = os.path.join(d, "check")
    cc = os.environ.get("CC", "cc")
    # gcc does not know clang's nullability qualifiers.
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-D_Nonnull=", "-D_Nullable=",
                    src, "-o", exe, "-L", lib_dir, "-l" + lib_name,
                    "-Wl,-rpath," + os.path.abspath(lib_dir)], check=True)
    # The library the program was linked against, not whichever copy of the same name
    # comes first on an inherited LD_LIBRARY_PATH (cargo puts stale uplifted ones there).
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.abspath(lib_dir))
    r = subprocess.run([exe], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit("the check program failed (%d): %s" % (r.returncode, r.stderr.strip()))
    out = r.stdout
    print(out.strip())
    if out.split()[0] != str(len(names)):
        sys.exit("unexpected output: " + out)
