"""``python -m tha inspect | leaks | verify FILE``: look into a saved heap
without the application that wrote it (the file carries the schema).

FILE is a checkpoint written by ``heap.checkpoint(path)`` (loaded with
``tha.Heap.load``, optionally replaying ``--log``) or a raw snapshot frame
(``heap.snapshot()`` bytes written to a file; recognised by the frame magic
``THAF``). Function pointers are shown by name: each name the schema
declares is bound to a placeholder address in this process, never called.
Likewise each data extern is bound to a zeroed placeholder of its declared
size, so pointers into it show as the extern's name and offset (the
extern's own bytes live in the program, not in the file).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys

from .._ffi import ffi as _cffi, lib
from ..dump import census
from ..durability import file_schema
from ..errors import Error, check
from ..heap import Heap
from ..reach import describe, field_path, first_dangling
from ..schema import Schema, _externs_declared, _functions_declared
from .console import terminal_progress

FRAME_MAGIC = b"THAF"


# ---- opening a file -----------------------------------------------------------

class Opened:
    """A heap read from FILE and what the file said about it."""

    def __init__(self, heap: Heap, kind: str, path: str, info: dict, report=None):
        self.heap = heap
        self.kind = kind        # "checkpoint" or "snapshot frame"
        self.path = path
        self.info = info        # seq, epoch, lineage, fingerprint, capacity, top
        self.report = report    # tha.LoadReport of a checkpoint (log replay)


def _placeholders(schema: Schema) -> tuple:
    """({name: address} binding every declared function to a distinct byte
    of a buffer that is never executed, {name: zeroed buffer of its size}
    for every declared data extern); the buffers stay alive with them."""
    names = sorted(_functions_declared(schema._c))
    buf = _cffi.new("char[]", max(1, len(names)))
    base = int(_cffi.cast("uintptr_t", buf))
    externs = {n: _cffi.new("char[]", size)
               for n, (size, _addr) in _externs_declared(schema._c).items()}
    return {n: base + i for i, n in enumerate(names)}, externs, buf


def open_file(path: str, log: str | None = None, progress=None) -> Opened:
    """Reads FILE, verifying every checksum (and replaying ``log``), and runs
    no heap check (callers decide); ``progress(done, total)`` as for
    Heap.load. Raises tha.Error or OSError."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == FRAME_MAGIC:
        if log is not None:
            raise Error(f"{path}: --log needs a checkpoint file; this is a raw "
                        "snapshot frame")
        with open(path, "rb") as f:
            frame = f.read()
        buf = _cffi.from_buffer(frame)
        fi = _cffi.new("tha_frame_info_t *")
        rc = lib.tha_frame_info(buf, len(buf), fi)
        check(rc)
        if fi.kind != lib.THA_FRAME_SNAPSHOT:
            raise Error(f"{path}: a delta frame (seq {fi.seq}), not a snapshot: "
                        "it only means something on top of the heap before it")
        msg = _cffi.new("char[256]")
        out = _cffi.new("tha_schema_t **")
        check(lib.tha_frame_schema(buf, len(buf), out, msg, 256), lambda: msg)
        schema = Schema("", _c=_cffi.gc(out[0], lib.tha_schema_release))
        funcs, externs, keep = _placeholders(schema)
        heap = Heap.from_snapshot(frame, functions=funcs, externs=externs)
        heap._inspect_keep = keep
        info = {k: getattr(fi, k) for k in ("seq", "epoch", "lineage", "fingerprint",
                                            "capacity", "top")}
        return Opened(heap, "snapshot frame", path, info)
    if not hasattr(Heap, "load"):
        raise Error(f"{path}: not a snapshot frame (no THAF magic), and this "
                    "build cannot read checkpoint files")
    funcs, externs, keep = _placeholders(file_schema(path))
    heap = Heap.load(path, log=log, functions=funcs, externs=externs, check=False,
                     progress=progress)
    heap._inspect_keep = keep
    st = heap.stats()
    info = {"seq": st["seq"], "epoch": st["epoch"], "lineage": st["lineage"],
            "fingerprint": heap.schema.fingerprint, "capacity": st["capacity"],
            "top": st["top"]}
    return Opened(heap, "checkpoint", path, info, getattr(heap, "load_report", None))


# ---- describing objects and pointers --------------------------------------------

class View:
    """The dump of a heap with pointer targets resolved: which allocation,
    which element, which field."""

    def __init__(self, heap: Heap):
        self.heap = heap
        self.schema = heap.schema
        self.ffi = heap.schema.ffi
        self.dump = heap.dump()
        self.objects = self.dump["objects"]
        self.starts = [o["offset"] for o in self.objects]
        self.sizes = [self.ffi.sizeof(self.schema.ctype(o["type"])) for o in self.objects]
        self.rooted: dict = {}
        for name, off in sorted(self.dump["roots"].items()):
            self.rooted.setdefault(off, []).append(name)

    def owner(self, off: int):
        """(index of the object holding off, byte within it) or None."""
        i = bisect.bisect_right(self.starts, off) - 1
        if i < 0:
            return None
        o = self.objects[i]
        rel = off - o["offset"]
        return (i, rel) if rel < self.sizes[i] * o["count"] else None

    def target(self, off: int | None, roots: bool = True) -> str:
        """'NULL', 'struct emp @0x4008', 'struct emp @0x4008[3].salary',
        '... (root boss)', '&labels+6 (data extern)' (dump() names a
        pointer into an extern so), or '0x1234 (not a live allocation)'."""
        if off is None:
            return "NULL"
        if isinstance(off, str):
            return f"{off} (data extern)"
        own = self.owner(off)
        if own is None:
            return f"0x{off:x} (not a live allocation)"
        i, rel = own
        o = self.objects[i]
        s = f"{o['type']} @0x{o['offset']:x}"
        size = self.sizes[i]
        k, inner = divmod(rel, size)
        if o["count"] > 1:
            s += f"[{k}]"
        if inner:
            s += field_path(self.schema.ctype(o["type"]), inner, self.ffi)
        names = self.rooted.get(off) if roots else None
        if names:
            s += " (root " + ", ".join(names) + ")"
        return s


def _text(v, ctype, view: View, ffi) -> str:
    """One value as text, following ctype."""
    kind = ctype.kind
    if kind == "pointer":
        return "-> " + view.target(v) if v is not None else "NULL"
    if kind == "function":
        return "NULL" if v is None else f"&{v}"
    if kind == "array" and ctype.item.cname == "char":
        return repr(bytes(v).rstrip(b"\0"))
    if kind == "array":
        return "[" + ", ".join(_text(x, ctype.item, view, ffi) for x in v) + "]"
    if kind == "struct":
        return "{" + ", ".join(f"{n} = {_text(v[n], f.type, view, ffi)}"
                               for n, f in ctype.fields) + "}"
    if kind == "union":
        return "<union " + bytes(v).hex() + ">"
    return repr(v)


def _jsonable(v, ctype, view: View):
    kind = ctype.kind
    if kind == "pointer":
        return None if v is None else {"offset": v, "target": view.target(v)}
    if kind == "array" and ctype.item.cname == "char":
        return bytes(v).rstrip(b"\0").decode("utf-8", "backslashreplace")
    if kind == "array":
        return [_jsonable(x, ctype.item, view) for x in v]
    if kind == "struct":
        return {n: _jsonable(v[n], f.type, view) for n, f in ctype.fields}
    if kind == "union":
        return bytes(v).hex()
    return v


def _object_json(view: View, i: int) -> dict:
    o = view.objects[i]
    ctype = view.schema.ctype(o["type"])
    if ctype.cname == "char":
        value = bytes(o["value"]).decode("utf-8", "backslashreplace")
    else:
        value = [_jsonable(x, ctype, view) for x in o["value"]]
    return {"offset": o["offset"], "type": o["type"], "count": o["count"],
            "bytes": view.sizes[i] * o["count"], "roots": view.rooted.get(o["offset"], []),
            "value": value}


def _print_object(view: View, i: int, out) -> None:
    o = view.objects[i]
    ctype = view.schema.ctype(o["type"])
    n = o["count"]
    roots = view.rooted.get(o["offset"])
    head = (f"{o['type']} @0x{o['offset']:x}  "
            f"({n} element{'s' if n != 1 else ''}, {view.sizes[i] * n:,} bytes)")
    if roots:
        head += "  root " + ", ".join(roots)
    print(head, file=out)
    if ctype.cname == "char":
        print(f"  = {bytes(o['value'])!r}", file=out)
        return
    ffi = view.ffi
    for k, elem in enumerate(o["value"]):
        pre = f"  [{k}]" if n > 1 else ""
        if ctype.kind == "struct":
            for name, f in ctype.fields:
                print(f"{pre}  {name} = {_text(elem[name], f.type, view, ffi)}", file=out)
        else:
            print(f"{pre}  = {_text(elem, ctype, view, ffi)}", file=out)


# ---- summaries ----------------------------------------------------------------

def summary(op: Opened) -> dict:
    """What a file holds, from a walk of the allocations and a lookup per
    root: no dump (that is only for --objects)."""
    heap = op.heap
    with heap._lock:
        counts = census(heap)
        roots = {n: {"offset": off, "target": describe(heap, off)}
                 for n, off in ((n, heap.offset_of(p)) for n, p in heap.roots.items())}
    schema = heap.schema
    types = [{"type": schema.type_name(schema.ctype_of(tid)), "objects": c[0],
              "elements": c[1], "bytes": c[2]} for tid, c in counts.items()]
    leaks = heap.leaks()
    st = heap.stats()
    d = {"file": op.path, "kind": op.kind, "file_bytes": os.path.getsize(op.path),
         **op.info, "live_objects": st["live_objects"], "live_bytes": st["live_bytes"],
         "roots": roots, "types": sorted(types, key=lambda t: t["type"]),
         "unreachable": {"objects": len(leaks), "bytes": sum(lk.bytes for lk in leaks)}}
    if op.report is not None and op.report.log:
        d["log"] = _report_dict(op.report)
    return d


def _report_dict(rep) -> dict:
    return {"log": rep.log, "checkpoint_seq": rep.checkpoint_seq, "seq": rep.seq,
            "frames_applied": rep.frames_applied, "frames_skipped": rep.frames_skipped,
            "clean": rep.clean, "stopped": None if rep.clean else rep.message,
            "stop_offset": None if rep.clean else rep.stop_offset}


def _print_summary(d: dict, out) -> None:
    print(f"{d['file']}: {d['kind']}, {d['file_bytes']:,} bytes", file=out)
    print(f"seq {d['seq']}  epoch {d['epoch']}  lineage {d['lineage']:016x}  "
          f"schema {d['fingerprint']:016x}", file=out)
    print(f"image {d['top']:,} of {d['capacity']:,} bytes; {d['live_objects']:,} "
          f"objects, {d['live_bytes']:,} bytes live; unreachable "
          f"{d['unreachable']['objects']:,} objects, {d['unreachable']['bytes']:,} bytes",
          file=out)
    if "log" in d:
        lg = d["log"]
        s = (f"log {lg['log']}: {lg['frames_applied']} frames replayed, "
             f"{lg['frames_skipped']} skipped, checkpoint seq {lg['checkpoint_seq']} "
             f"-> {lg['seq']}")
        if not lg["clean"]:
            s += f"; stopped at byte {lg['stop_offset']}: {lg['stopped']}"
        print(s, file=out)
    print(f"roots ({len(d['roots'])}):", file=out)
    for n, r in sorted(d["roots"].items()):
        print(f"  {n} -> {r['target']}", file=out)
    print(f"{'type':<24}{'objects':>10}{'elements':>11}{'bytes':>14}", file=out)
    for t in d["types"]:
        print(f"{t['type']:<24}{t['objects']:>10,}{t['elements']:>11,}{t['bytes']:>14,}",
              file=out)


# ---- commands -------------------------------------------------------------------

def _open_or_fail(prog: str, path: str, log=None):
    try:
        return open_file(path, log, terminal_progress(f"{prog}: loading {path}")), None
    except (Error, OSError) as e:
        return None, f"{prog}: {path}: {e}" if path not in str(e) else f"{prog}: {e}"


def run_inspect(args) -> int:
    op, err = _open_or_fail("inspect", args.file, args.log)
    if err:
        print(err, file=sys.stderr)
        return 1
    d = summary(op)
    want = None
    if args.type:
        try:
            ctype = op.heap.schema.ctype(args.type)
            op.heap.schema.type_id(ctype)  # in the schema, not just parsable
            want = op.heap.schema.type_name(ctype)
        except Error:
            print(f"inspect: no type {args.type!r} in {args.file}; it has "
                  f"{', '.join(op.heap.schema.type_names())}", file=sys.stderr)
            return 2
    show = args.objects or want is not None
    view = View(op.heap) if show else None   # the dump: only to list objects
    picked = [i for i, o in enumerate(view.objects)
              if want is None or o["type"] == want] if show else []
    if args.json:
        if show:
            d["objects"] = [_object_json(view, i) for i in picked]
        if args.schema:
            d["schema"] = op.heap.schema.cdef
        json.dump(d, sys.stdout, indent=2)
        print()
        return 0
    _print_summary(d, sys.stdout)
    if args.schema:
        print("schema:")
        print(op.heap.schema.cdef.strip())
    if show:
        print()
        for i in picked:
            _print_object(view, i, sys.stdout)
    return 0


def run_leaks(args) -> int:
    op, err = _open_or_fail("leaks", args.file, args.log)
    if err:
        print(err, file=sys.stderr)
        return 2
    leaks = op.heap.leaks()
    total = sum(lk.bytes for lk in leaks)
    if args.json:
        json.dump({"file": op.path, "objects": len(leaks), "bytes": total,
                   "leaks": [lk._asdict() for lk in leaks]}, sys.stdout, indent=2)
        print()
    else:
        st = op.heap.stats()
        print(f"{op.path}: {len(leaks):,} of {st['live_objects']:,} allocations "
              f"unreachable from the {len(op.heap.roots)} roots, {total:,} bytes")
        if leaks:
            print(f"{'offset':>14}  {'type':<24}{'count':>8}{'bytes':>12}")
            for lk in leaks:
                print(f"{'0x%x' % lk.offset:>14}  {lk.type:<24}{lk.count:>8,}"
                      f"{lk.bytes:>12,}")
    return 1 if leaks else 0


def run_verify(args) -> int:
    op, err = _open_or_fail("verify", args.file, args.log)
    if err:
        print(err, file=sys.stderr)
        return 1
    try:
        # no lint: a forgotten pointer field's raw word holds the address of
        # the heap that wrote the file, which the file does not record
        op.heap.check(lint=False)
    except Error as e:
        print(f"verify: {args.file}: {e}", file=sys.stderr)
        return 1
    with op.heap._lock:
        bad = first_dangling(op.heap)
    if bad:
        print(f"verify: {args.file}: pointer {bad}", file=sys.stderr)
        return 1
    rep = op.report
    if rep is not None and rep.log and not rep.clean:
        print(f"verify: {args.log}: replay stopped at byte {rep.stop_offset} "
              f"(seq {rep.stop_seq}): {rep.message}; {rep.frames_applied} frames "
              f"replayed up to seq {rep.seq}", file=sys.stderr)
        return 1
    st = op.heap.stats()
    extra = ""
    if rep is not None and rep.log:
        extra = f"; log: {rep.frames_applied} frames replayed to seq {rep.seq}"
    print(f"ok: {args.file}: {op.kind}, seq {op.info['seq']}, {st['live_objects']:,} "
          f"objects, {st['live_bytes']:,} bytes; every checksum and pointer "
          f"verified{extra}")
    return 0


INSPECT_DOC = """\
Prints what a saved heap holds: file kind, seq, epoch, lineage, schema
fingerprint, image size, live objects and bytes, unreachable objects, the
roots and their targets, and per type the objects, elements and bytes.
--objects (or --type T) lists objects with every field by name; pointers
are shown as their targets (`-> struct emp @0x4008[3].salary (root boss)`),
function pointers by name. FILE: a checkpoint (heap.checkpoint) or a raw
snapshot frame (heap.snapshot() bytes). Exit 1 if FILE cannot be read.
"""

LEAKS_DOC = """\
Lists the allocations of a saved heap that no root reaches (type, count,
offset, bytes), marking from the roots through every pointer slot
(interior pointers count; function pointers do not). Exit 0 when there
are none, 1 when there are, 2 if FILE cannot be read.
"""

VERIFY_DOC = """\
Loads FILE (checkpoint or raw snapshot frame), checking the format version,
schema and every checksum, replays --log if given, then walks the heap
(tha_heap_check: allocator metadata, pointer map, every pointer in range,
roots), every pointer's type (the start of an object of its declared type
or of one nested in another; char and void pointers anywhere) and every
pointer field (NULL or inside a live allocation: a pointer into freed
memory or allocator metadata is a problem). Prints `ok: ...` and exits 0,
or prints the first problem and exits 1. A log whose replay stopped early
(torn or corrupt frame) is a problem. A pointer field left out of the
schema cannot be found here: its raw words hold the address of the heap
that wrote FILE, which FILE does not record (heap.check() finds them on
that heap).
"""


def add_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("inspect", help="summary and objects of a checkpoint or "
                       "snapshot file", description=INSPECT_DOC, formatter_class=fmt)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--log", metavar="L", help="delta log to replay on a checkpoint first")
    p.add_argument("--objects", action="store_true", help="list every object and field")
    p.add_argument("--type", metavar="T", help="list the objects of type T only "
                   "('struct emp' or 'emp')")
    p.add_argument("--schema", action="store_true", help="print the C declarations "
                   "the file carries")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_inspect)

    p = sub.add_parser("leaks", help="unreachable allocations in a checkpoint or "
                       "snapshot file", description=LEAKS_DOC, formatter_class=fmt)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--log", metavar="L", help="delta log to replay on a checkpoint first")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_leaks)

    p = sub.add_parser("verify", help="check every checksum and pointer of a "
                       "checkpoint (and log) or snapshot file", description=VERIFY_DOC,
                       formatter_class=fmt)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--log", metavar="L", help="delta log to replay and verify too")
    p.set_defaults(func=run_verify)
