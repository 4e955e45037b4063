"""Schema: C struct declarations parsed by cffi, registered with the C core.

cffi computes the layout (the platform C ABI), this module walks it field by
field and hands each one to ``tha_schema_add_field``; the C side flattens
pointer slots into relocation tables and fingerprints the result. The reverse
direction rebuilds declarations from a C schema (a snapshot, a handshake) so
a process with no application code still gets typed cdata.
"""

from __future__ import annotations

from typing import Any

import bisect
import re

import cffi

from ._ffi import ffi as _cffi, lib
from .errors import NotFound, SchemaError, check

# Primitive C type names (as cffi spells them) -> tha primitive ids are
# decided by size and signedness, so "int", "long" and "int64_t" all map to
# the fixed-width ids the wire format uses.
_PRIM_NAMES = {
    lib.THA_T_CHAR: "char", lib.THA_T_I8: "int8_t", lib.THA_T_U8: "uint8_t",
    lib.THA_T_I16: "int16_t", lib.THA_T_U16: "uint16_t",
    lib.THA_T_I32: "int32_t", lib.THA_T_U32: "uint32_t",
    lib.THA_T_I64: "int64_t", lib.THA_T_U64: "uint64_t",
    lib.THA_T_F32: "float", lib.THA_T_F64: "double", lib.THA_T_BOOL: "_Bool",
    lib.THA_T_VOID: "void",
}
# C spellings of the same primitives ("int", "unsigned long", ...)
_C_SPELLINGS = ("int", "unsigned int", "long", "unsigned long", "short",
                "unsigned short", "long long", "unsigned long long",
                "signed char", "unsigned char", "size_t", "ssize_t",
                "intptr_t", "uintptr_t", "bool")
# every primitive spelling the schema looks up, laid out with the structs
_PRIM_SPELLINGS = tuple(n for n in _PRIM_NAMES.values() if n != "void") + _C_SPELLINGS
_DEFINITION = re.compile(r"\b(struct|union)\s+([A-Za-z_$][\w$]*)\s*\{")
# what _tag_masks reads of a cdef: comments (a "tha:" one is an annotation),
# struct and union bodies, and the semicolons ending their fields
_SCAN = re.compile(r"(?P<comment>/\*.*?\*/|//[^\n]*)"
                   r"|(?P<open>(?:\b(?P<kw>struct|union)\s+(?P<tag>[A-Za-z_$][\w$]*)\s*)?\{)"
                   r"|(?P<close>\})|(?P<semi>;)", re.S)
_ANNOTATION = re.compile(r"(?:/\*|//)\s*tha:\s*(.*?)\s*(?:\*/)?$", re.S)
_TAG_MASK = re.compile(r"tag_mask\s*=\s*(0[xX][0-9a-fA-F]+|\d+)")
_INTS = {
    (1, True): lib.THA_T_I8, (1, False): lib.THA_T_U8,
    (2, True): lib.THA_T_I16, (2, False): lib.THA_T_U16,
    (4, True): lib.THA_T_I32, (4, False): lib.THA_T_U32,
    (8, True): lib.THA_T_I64, (8, False): lib.THA_T_U64,
}


_parser_warm = False  # warm_parser() ran in this process


def warm_parser() -> None:
    """Pays cffi's one-time set-up of its C parser (pycparser's tables and
    cffi's parser caches: 20-50 ms in a fresh process) now, on a
    declaration of its own, instead of in the first Schema parse. A
    Standby started without a heap calls it, so the schema its first bulk
    sync brings is parsed warm after the last byte. Idempotent."""
    global _parser_warm
    if _parser_warm:
        return
    ffi = cffi.FFI()
    ffi.cdef("struct tha_warm { int x; double y; struct tha_warm *next; };")
    ffi.typeof("void(*)(" + ", ".join(f"{t} *" for t in
                                      ("struct tha_warm",) + _PRIM_SPELLINGS) + ")")
    _parser_warm = True


def _prim_id(ffi: cffi.FFI, ctype, where: str) -> int:
    """tha primitive id of a cffi primitive/enum/void ctype."""
    if ctype.kind == "void":
        return lib.THA_T_VOID
    name = ctype.cname
    if name == "char":
        return lib.THA_T_CHAR
    if name in ("_Bool", "bool"):
        return lib.THA_T_BOOL
    if name == "float":
        return lib.THA_T_F32
    if name == "double":
        return lib.THA_T_F64
    if ctype.kind == "enum" or (ctype.kind == "primitive" and "double" not in name):
        size = ffi.sizeof(ctype)
        try:
            signed = int(ffi.cast(ctype, -1)) < 0
        except (OverflowError, TypeError):
            signed = True
        key = (size, signed)
        if key in _INTS and name not in ("wchar_t", "char16_t", "char32_t"):
            return _INTS[key]
    raise SchemaError(f"{where}: type '{name}' is not supported")


def _anonymous_member(ffi: cffi.FFI, kw: str, name: str):
    """(kind, first field) of the first anonymous struct/union member of
    kw name, or None. cffi flattens such members into ctype.fields, so only
    its parsed model still shows them."""
    decls = getattr(getattr(ffi, "_parser", None), "_declarations", {})
    tp = decls.get(f"{kw} {name}", (None,))[0]
    for fname, ftype in zip(getattr(tp, "fldnames", None) or (),
                            getattr(tp, "fldtypes", None) or ()):
        if fname == "":
            inner = getattr(ftype, "fldnames", None) or ("?",)
            return getattr(ftype, "kind", "struct"), inner[0]
    return None


def _declarators(text: str) -> list:
    """Names a field declaration declares: "struct n *a, *b[2]" -> a, b;
    "int (*cb)(int)" -> cb; "unsigned x : 3" -> x."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    names = []
    for part in parts:
        m = re.search(r"\(\s*\*\s*([A-Za-z_$][\w$]*)", part)
        if not m:
            m = re.search(r"([A-Za-z_$][\w$]*)\s*(?:\[[^\]]*\]\s*)*(?::[^,]*)?$",
                          part.strip())
        if m:
            names.append(m[1])
    return names


def _tag_masks(cdef: str) -> dict:
    """{("struct node", "parent"): 0x1} from the cdef's field annotations:
    a comment ``/* tha: tag_mask=0x1 */`` (or ``// tha: tag_mask=0x1``)
    right after a field's semicolon, on its line, gives every name that
    declaration declares the tag mask (tha_field_t.tag_mask: low bits of
    the pointer that are tags, within 0x7). An annotation anywhere else is
    a SchemaError, so a misplaced one is not silently ignored."""
    out, stack = {}, []   # stack: the open bodies, "struct node" or None
    start, last = 0, None  # where the current declaration began; the last
                           # field's (owner, start, end) for an annotation
    if "tha:" not in cdef:  # the common case costs one search
        return out
    for m in _SCAN.finditer(cdef):
        if m["comment"]:
            ann = _ANNOTATION.match(m["comment"])
            if not ann:
                continue
            line = cdef.count("\n", 0, m.start()) + 1
            if last is None or cdef[last[2]:m.start()].strip() or \
                    "\n" in cdef[last[2]:m.start()]:
                raise SchemaError(f"cdef line {line}: '{m['comment']}' follows no "
                                  "field declaration on its line")
            mask = _TAG_MASK.fullmatch(ann[1])
            if not mask:
                raise SchemaError(f"cdef line {line}: unknown tha annotation "
                                  f"'{ann[1]}' (known: tag_mask=0xN)")
            text = _SCAN.sub(lambda c: " " if c["comment"] else c[0],
                             cdef[last[1]:last[2] - 1])
            for name in _declarators(text):
                out[(last[0], name)] = int(mask[1], 0)
            last = None
            start = m.end()
        elif m["open"]:
            stack.append(f"{m['kw']} {m['tag']}" if m["tag"] else None)
            start, last = m.end(), None
        elif m["close"]:
            if stack:
                stack.pop()
            start, last = m.end(), None
        else:  # a field's names are read only if an annotation follows
            last = (stack[-1], start, m.end()) if stack and stack[-1] else None
            start = m.end()
    return out


def _extern_target(ffi: cffi.FFI, target, where: str) -> tuple:
    """(address, size or None) of what an extern is bound to: a cffi array
    or pointer cdata (its size, when a pointer's item has one), or an int
    address (size unknown)."""
    if isinstance(target, int):
        return target, None
    try:
        ctype = ffi.typeof(target)
    except TypeError:
        raise SchemaError(f"{where}: expected a cffi pointer or array or an int "
                          f"address, not {type(target).__name__}") from None
    addr = int(ffi.cast("uintptr_t", target))
    if ctype.kind == "array":
        return addr, ffi.sizeof(target)
    if ctype.kind != "pointer":
        raise SchemaError(f"{where}: expected a cffi pointer or array, not {ctype.cname}")
    try:
        return addr, ffi.sizeof(ctype.item)
    except (cffi.FFIError, TypeError, ValueError, _cffi.error):  # (the compiled ffi's own)
        return addr, None  # void *, an opaque struct


class Schema:
    """Registered struct layouts.

    ``Schema(cdef)`` parses C declarations (struct/union definitions,
    typedefs, enums) with cffi. ``functions`` maps names to cffi function
    pointers for function-pointer fields; names travel, addresses are bound
    per process (``bind``).

    ``externs`` declares data externs: objects outside the heap that heap
    pointers may point into (a static list head, a string literal, a
    sentinel), by name and size, bound per process like functions. It maps
    a name to a cffi cdata (an array, or a pointer to a sized type: that
    size, that address), to ``(cdata_or_address, size)``, or to
    ``(None, size)`` (declared, bound later with ``bind_extern``). A pointer
    into a bound extern travels as the extern's name and offset and lands
    in the receiver's own object; one into nothing registered fails
    ``delta()``/``snapshot()`` with InvalidPointer naming the object and
    field. For a Schema taken from a frame or file (which carries names and
    sizes), ``externs`` maps names to what to bind them to.

    Tag bits: a pointer field annotated ``/* tha: tag_mask=0x1 */`` after
    its semicolon keeps those low bits as tags (a red-black tree's colour
    in the parent pointer); a tagged NULL (``0x1``) then travels in that
    field, and only there.
    """

    def __init__(self, cdef: str, functions: dict | None = None, *,
                 externs: dict | None = None, _c=None):
        if _c is not None:  # adopt a C schema (from a frame or a file)
            self._c = _c
            cdef = self._cdef_from_c()
        self.cdef = cdef
        self._ctypes: dict = {}       # "struct emp", "int", ... -> cffi ctype
        self._pointers: dict = {}     # cffi ctype -> ctype of a pointer to it
        self._resolved: dict = {}     # bare tag name -> ctype (ctype())
        try:
            self._parse(cdef)
        except cffi.CDefError as e:
            raise SchemaError(f"cannot parse declarations: {e}") from None
        except RecursionError:
            raise SchemaError("structs nested too deeply by value for cffi: "
                              "define each struct after the ones it holds "
                              "by value") from None
        self._type_ids: dict = {}     # cffi ctype -> tha type id
        self._by_id: dict = {}        # tha type id -> cffi ctype
        self._funcs: dict = {}        # function address -> name
        self._names: dict = {}        # cffi ctype -> "struct emp" (cffi's
                                      # cname is the typedef name if any)
        self._extern_keep: dict = {}  # name -> the cdata bound (kept alive)
        self._extern_index = None     # sorted (address, size, name), or None
        self._elems: dict = {}        # "uint32_t*" -> ctypes fields spell it
                                      # with ("enum e *", "unsigned int *")
        self._masks = _tag_masks(cdef)  # (owner, field) -> tag mask
        if _c is None:
            self._c = self._register(functions or {}, externs or {})
        else:
            self._index()
            self._check_regenerated()
            for name, fn in (functions or {}).items():
                self.bind(name, fn)
            for name, target in (externs or {}).items():
                self.bind_extern(name, target)
        # pointers out of the region may mean something (dump() reads them)
        self.outside_pointers = bool(self._masks) or bool(self.externs())

    def _parse(self, cdef: str) -> None:
        """A new ffi holding cdef, every struct and union laid out."""
        self.ffi = cffi.FFI()
        self.ffi.cdef(cdef)
        try:
            self._warm(cdef)
        except Exception:
            # a type cffi cannot lay out stops the batch halfway and leaves
            # the types after it incomplete for good (cffi caches them):
            # start again on a fresh ffi, one type at a time, as cffi
            # reports each on its own
            self._ctypes.clear()
            self._pointers.clear()
            self.ffi = cffi.FFI()
            self.ffi.cdef(cdef)
            self._warm_one_by_one(cdef)

    def _warm(self, cdef: str) -> None:
        """Lays out every struct and union in the order the declarations
        define them, with one ffi.typeof: a function pointer type taking a
        pointer to each of them (and to each primitive spelling), whose
        argument ctypes fill _ctypes and _pointers. cffi parses every
        string it is handed afresh (cparser.Parser._parse: its whole
        declaration table sorted, a line per typedef, then pycparser), so
        a typeof per type costs O(n) each and O(n^2) for the schema; this
        is one parse.
        cffi builds a type's layout recursively through the types it holds
        by value; done innermost first (the order C requires, and the order
        _cdef_from_c writes) each step finds its members laid out already,
        so a schema nested 60,000 deep (from a peer, a snapshot or a file)
        costs no deep recursion."""
        _typedefs, structs, unions = self.ffi.list_types()
        left = {f"struct {n}" for n in structs} | {f"union {n}" for n in unions}
        order = []  # defined ones as defined, then forward-only and anonymous
        for m in _DEFINITION.finditer(cdef):
            key = f"{m[1]} {m[2]}"
            if key in left:
                left.discard(key)
                order.append(key)
        order += sorted(left)
        spellings = order + list(_PRIM_SPELLINGS)
        fn = self.ffi.typeof("void(*)(" + ", ".join(f"{t} *" for t in spellings) + ")")
        for spelling, ptr in zip(spellings, fn.args):
            self._ctypes[spelling] = ptr.item
            self._pointers.setdefault(ptr.item, ptr)

    def _warm_one_by_one(self, cdef: str) -> None:
        """_warm with a typeof per type (each error on its own type)."""
        for m in _DEFINITION.finditer(cdef):
            try:
                self.ffi.sizeof(f"{m[1]} {m[2]}")
            except (cffi.FFIError, cffi.CDefError, ValueError, TypeError):
                pass  # refused (or reported) where it is registered

    def _named(self, spelling: str):
        """ctype of "struct emp", "int", ...: laid out by _warm, else cffi's."""
        ctype = self._ctypes.get(spelling)
        return ctype if ctype is not None else self.ffi.typeof(spelling)

    # -- building the C schema ------------------------------------------------

    def _register(self, functions: dict, externs: dict):
        declared, bind = {}, {}
        for name, spec in externs.items():
            target, declared[name] = _extern_spec(self.ffi, name, spec)
            if target is not None:
                bind[name] = target
        c = self._build(functions, declared)
        self._c = c
        for name, fn in functions.items():
            self.bind(name, fn)
        for name, target in bind.items():
            self.bind_extern(name, target)
        self._index()
        return c

    def _build(self, functions: dict, externs: dict | None = None,
               pointers: list | None = None):
        """A sealed C schema of every struct and union self.ffi declares
        (fills _names); functions by name, unbound; externs (name -> size)
        unbound; the cdef's tag masks on their fields; pointers, implicit
        pointer types by name ("emp*"), registered even if no field names
        them (a carried schema may hold one a C program registered by hand:
        a declaration cannot say so)."""
        out = _cffi.new("tha_schema_t **")
        check(lib.tha_schema_create(out))
        c = _cffi.gc(out[0], lib.tha_schema_release)
        ids = {}  # cffi ctype -> its id in c while registering
        _typedefs, structs, unions = self.ffi.list_types()
        declared = [("struct", n) for n in structs] + [("union", n) for n in unions]
        for kw, name in declared:
            ctype = self._named(f"{kw} {name}")
            if name.startswith("$"):
                continue  # anonymous: reached through its parent, refused there
            try:
                size, align = self.ffi.sizeof(ctype), self.ffi.alignof(ctype)
            except (cffi.FFIError, ValueError):
                continue  # declared but never defined: only pointers to it
            anon = _anonymous_member(self.ffi, kw, name)
            if anon:
                raise SchemaError(f"{kw} {name} field {anon[1]}: anonymous "
                                  f"{anon[0]} members are not supported; name "
                                  "the member")
            self._names[ctype] = f"{kw} {name}"
            tid = _cffi.new("uint32_t *")
            _check_c(c, lib.tha_schema_add_struct(
                c, name.encode(), size, align, kw == "union", tid))
            ids[ctype] = tid[0]
        for name in sorted(pointers or (), key=len):  # "emp**" registers "emp*"
            if lib.tha_schema_type_by_name(c, name.encode(), _cffi.NULL) == 0:
                continue
            tid, f = _cffi.new("uint32_t *"), _cffi.new("tha_field_t *")
            fname, target = _cffi.new("char[]", b"ptr"), _cffi.new("char[]", name[:-1].encode())
            f.name, f.kind, f.target = fname, lib.THA_K_PTR, target  # kept alive
            _check_c(c, lib.tha_schema_add_struct(c, name.encode(), 8, 8, 0, tid))
            _check_c(c, lib.tha_schema_add_field(c, tid[0], f))
        for ctype, tid in ids.items():
            for fname, field in ctype.fields or ():
                self._add_field(c, ctype, tid, fname, field)
        used = {(self._names[ct], fname) for ct in ids for fname, _f in ct.fields or ()}
        for owner, fname in self._masks.keys() - used:
            raise SchemaError(f"tag_mask annotation on {owner} field {fname}: this "
                              "schema has no such field")
        for name in functions:
            _check_c(c, lib.tha_schema_add_func(c, name.encode(), _cffi.NULL))
        for name, size in (externs or {}).items():
            _check_c(c, lib.tha_schema_add_extern(c, name.encode(), size, _cffi.NULL))
        _check_c(c, lib.tha_schema_seal(c))
        return c

    def _check(self, rc: int) -> int:
        return check(rc, lambda: lib.tha_schema_errmsg(self._c))

    def _add_field(self, c, owner, owner_id: int, fname: str, field) -> None:
        where = f"{self._names[owner]} field {fname}"
        f = _cffi.new("tha_field_t *")
        keep = []  # C strings must outlive the call

        def cstr(s: str):
            buf = _cffi.new("char[]", s.encode())
            keep.append(buf)
            return buf

        f.name = cstr(fname)
        f.offset = field.offset
        ftype, dims = field.type, []
        while ftype.kind == "array":
            if ftype.length is None:
                raise SchemaError(f"{where}: flexible array member without a count "
                                  "cannot be mirrored; give it a fixed size")
            dims.append(ftype.length)
            ftype = ftype.item
        if len(dims) > lib.THA_MAX_DIMS:
            raise SchemaError(f"{where}: more than {lib.THA_MAX_DIMS} array dimensions")
        for i, d in enumerate(dims):
            f.dims[i] = d
        # the C side refuses a mask on anything but a data pointer
        f.tag_mask = self._masks.get((self._names[owner], fname), 0)
        if field.bitsize not in (-1, None) and field.bitshift not in (-1, None):
            f.kind = lib.THA_K_BITS
            f.prim = _prim_id(self.ffi, ftype, where)
            f.bits[0], f.bits[1] = field.bitshift, field.bitsize
        elif ftype.kind in ("struct", "union"):
            f.kind = lib.THA_K_STRUCT
            f.target = cstr(self._tag(ftype, where))
        elif ftype.kind == "function":
            f.kind = lib.THA_K_FUNC
            f.sig = cstr(ftype.cname)
        elif ftype.kind == "pointer":
            # struct emp **: a pointer to the implicit pointer type "emp*"
            item, stars, levels = ftype.item, "", []
            while item.kind == "pointer":
                levels.append(item)  # the element ctype of each level's array
                item, stars = item.item, stars + "*"
            f.kind = lib.THA_K_PTR
            if item.kind in ("struct", "union"):
                f.target = cstr(self._tag(item, where) + stars)
            elif item.kind in ("primitive", "void", "enum"):
                f.target = cstr(_PRIM_NAMES[_prim_id(self.ffi, item, where)]
                                .replace("_Bool", "bool") + stars)
                # enum e **p: new("enum e *") is what p can point at
                base = _cffi.string(f.target).decode().rstrip("*")
                for i, level in enumerate(levels):
                    self._elems.setdefault(base + "*" * (len(levels) - i), []).append(level)
            else:
                raise SchemaError(f"{where}: pointer to {ftype.item.cname} is not "
                                  "supported (pointers may target structs, unions, "
                                  "primitives and pointers to them)")
        else:
            f.kind = lib.THA_K_SCALAR
            f.prim = _prim_id(self.ffi, ftype, where)
        _check_c(c, lib.tha_schema_add_field(c, owner_id, f))

    def _tag(self, ctype, where: str) -> str:
        """'emp' for the ctype of struct emp (however cffi spells it)."""
        name = self._names.get(ctype)
        if name is None and not ctype.cname.split(" ")[-1].startswith("$") \
                and ctype.cname.startswith(("struct ", "union ")):
            name = ctype.cname  # declared, never defined: sealing refuses it
        if name is None:
            raise SchemaError(f"{where}: anonymous {ctype.kind} types are not "
                              "supported; give the nested type a tag name")
        return name.split(" ", 1)[1]

    def _index(self) -> None:
        """Maps cffi ctypes to C type ids, and bound function addresses."""
        n = lib.tha_schema_type_count(self._c)
        info = _cffi.new("tha_type_info_t *")
        kinds = _user_kinds(self._c)
        pointers = self._pointer_ctypes(kinds)
        for tid in range(1, n):
            if lib.tha_schema_type_info(self._c, tid, info) != 0:
                continue
            name = _cffi.string(info.name).decode()
            if name.endswith("*"):  # the implicit pointer type "emp*"
                spelling = _pointer_spelling(name, kinds)
                ctype = pointers[name]
                self._names[ctype] = spelling
                self._pointer_aliases(name, tid, kinds)
                for alias in self._elems.get(name, ()):
                    self._type_ids.setdefault(alias, tid)
            elif info.is_prim:
                if tid == lib.THA_T_VOID:
                    continue
                if tid == lib.THA_T_RAW:  # untyped bytes: seen as uint8_t
                    self._by_id[tid] = self._named("uint8_t")
                    continue
                ctype = self._named(_PRIM_NAMES[tid])
            else:
                kw = "union" if info.is_union else "struct"
                ctype = self._named(f"{kw} {name}")
                self._names[ctype] = f"{kw} {name}"
            self._type_ids[ctype] = tid
            self._by_id[tid] = ctype
        for cname in _C_SPELLINGS:
            ctype = self._named(cname)
            self._type_ids.setdefault(ctype, _prim_id(self.ffi, ctype, cname))

    def _pointer_ctypes(self, kinds: dict) -> dict:
        """"emp*" -> the ctype of struct emp * for every pointer type, in one
        cffi parse (each costs a parse of the whole declaration table: one
        typeof per pointer type is O(n^2), as _warm says)."""
        names = _pointer_types(self._c)
        if not names:
            return {}
        spellings = [_pointer_spelling(name, kinds) for name in names]
        try:
            fn = self.ffi.typeof("void(*)(" + ", ".join(f"{sp} *" for sp in spellings)
                                 + ")")
            return {name: arg.item for name, arg in zip(names, fn.args)}
        except (cffi.FFIError, cffi.CDefError, TypeError):
            pass
        for name, spelling in zip(names, spellings):  # which one: name it
            try:
                self.ffi.typeof(spelling)
            except (cffi.FFIError, cffi.CDefError, TypeError) as e:
                raise SchemaError(f"pointer type {name}: no C type '{spelling}' "
                                  f"in these declarations ({e})") from None
        raise SchemaError("pointer types: cffi cannot declare them together")

    def _pointer_aliases(self, name: str, tid: int, kinds: dict) -> None:
        """A pointer type to a primitive ("uint32_t*") under the C spellings
        of that primitive too ("unsigned int *"): cffi keeps a field's
        spelling (unsigned int **u), so new("unsigned int *") must give
        what it can hold, as new("unsigned int") does for the primitive."""
        base = name.rstrip("*")
        if base in kinds or base in ("void", "tha_raw"):
            return
        prim = {v.replace("_Bool", "bool"): k for k, v in _PRIM_NAMES.items()}.get(base)
        stars = name[len(base):]
        for cname in _C_SPELLINGS:
            ctype = self._named(cname)
            if ctype.cname != base and _prim_id(self.ffi, ctype, cname) == prim:
                self._type_ids.setdefault(self.ffi.typeof(f"{cname} {stars}"), tid)

    # -- rebuilding declarations from a C schema -----------------------------

    def _cdef_from_c(self) -> str:
        c = self._c
        info = _cffi.new("tha_type_info_t *")
        f = _cffi.new("tha_field_t *")
        kinds, decls = _user_kinds(c), []

        def s(p) -> str:
            return _cffi.string(p).decode() if p != _cffi.NULL else ""

        # The carried schema lists types in canonical (name) order, not in
        # an order C accepts: a struct held by value must be complete before
        # the struct holding it. Every type is forward-declared first (enough
        # for pointers), then definitions follow in dependency order.
        bodies, needs = {}, {}
        for tid in range(lib.THA_T_FIRST_USER, lib.tha_schema_type_count(c)):
            if lib.tha_schema_type_info(c, tid, info) != 0:
                continue
            name = s(info.name)
            if name.endswith("*"):  # implicit: declared by the fields using it
                continue
            lines, needs[name] = [], []
            for i in range(info.nfields):
                check(lib.tha_schema_field_info(c, tid, i, f))
                fname = s(f.name)
                dims = "".join(f"[{d}]" for d in f.dims if d)
                target = s(f.target)
                if f.kind == lib.THA_K_SCALAR:
                    lines.append(f"{_PRIM_NAMES[f.prim]} {fname}{dims};")
                elif f.kind == lib.THA_K_BITS:
                    lines.append(f"{_PRIM_NAMES[f.prim]} {fname} : {f.bits[1]};")
                elif f.kind == lib.THA_K_STRUCT:
                    lines.append(f"{kinds[target]} {target} {fname}{dims};")
                    needs[name].append(target)
                elif f.kind == lib.THA_K_PTR:
                    tags = f" /* tha: tag_mask=0x{f.tag_mask:x} */" if f.tag_mask else ""
                    lines.append(f"{_pointer_spelling(target + '*', kinds)}"
                                 f"{fname}{dims};{tags}")
                elif f.kind == lib.THA_K_FUNC:
                    sig = s(f.sig) or "void(*)(void)"
                    lines.append(sig.replace("(*)", f"(*{fname}{dims})", 1) + ";")
            bodies[name] = f"{kinds[name]} {name} {{ " + " ".join(lines) + " };"
        decls = [f"{kinds[name]} {name};" for name in bodies]
        done: set = set()
        for root in bodies:  # depth first, without recursion (deep nesting)
            if root in done:
                continue
            done.add(root)
            stack = [(root, iter(needs[root]))]
            while stack:  # sealing refused by-value cycles: this ends
                name, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    decls.append(bodies[name])
                elif dep not in done:
                    done.add(dep)
                    stack.append((dep, iter(needs[dep])))
        return "\n".join(decls)

    def _check_regenerated(self) -> None:
        """The declarations rebuilt from a C schema must lay out the same.
        Registers them again from this ffi (parsed and laid out already)."""
        again = self._build(_functions_declared(self._c),
                            {n: size for n, (size, _a) in _externs_declared(self._c).items()},
                            _pointer_types(self._c))
        msg = _cffi.new("char[256]")
        rc = lib.tha_schema_compare(self._c, again, msg, 256)
        if rc:
            raise SchemaError("this platform lays the carried schema out "
                              f"differently: {_cffi.string(msg).decode()}")

    # -- public --------------------------------------------------------------

    @property
    def fingerprint(self) -> int:
        return lib.tha_schema_fingerprint(self._c)

    def to_bytes(self) -> bytes:
        n = _cffi.new("size_t *")
        self._check(lib.tha_schema_serialize(self._c, _cffi.NULL, 0, n))
        buf = _cffi.new("char[]", n[0])
        self._check(lib.tha_schema_serialize(self._c, buf, n[0], n))
        return _cffi.buffer(buf, n[0])[:]

    @classmethod
    def from_bytes(cls, data: bytes) -> "Schema":
        out = _cffi.new("tha_schema_t **")
        msg = _cffi.new("char[256]")
        check(lib.tha_schema_deserialize(data, len(data), out, msg, 256),
              lambda: msg)
        return cls("", _c=_cffi.gc(out[0], lib.tha_schema_release))

    def compare(self, other: "Schema") -> str | None:
        """None if the layouts match, else the first difference."""
        msg = _cffi.new("char[256]")
        if lib.tha_schema_compare(self._c, other._c, msg, 256) == 0:
            return None
        return _cffi.string(msg).decode()

    def bind(self, name: str, fn: Any) -> None:
        """Binds a declared function name to a cffi function pointer."""
        addr = int(self.ffi.cast("uintptr_t", fn)) if not isinstance(fn, int) else fn
        self._check(lib.tha_schema_bind_func(self._c, name.encode(),
                                             _cffi.cast("void(*)(void)", addr)))
        self._funcs[addr] = name

    def function_name(self, addr: int) -> str | None:
        return self._funcs.get(addr)

    def bind_extern(self, name: str, target: Any) -> None:
        """Binds a declared extern to this process's object: a cffi array or
        pointer cdata (kept alive by the schema; refused if smaller than the
        declared size), an int address, or None to unbind. Frames pointing
        into an extern this process has not bound are refused."""
        where = f"bind_extern('{name}')"
        addr, size = (0, None) if target is None else _extern_target(self.ffi, target, where)
        declared = self.externs().get(name)
        if declared is not None and size is not None and size < declared[0]:
            raise SchemaError(f"{where}: {size} bytes, the extern is declared "
                              f"with {declared[0]}")
        self._check(lib.tha_schema_bind_extern(self._c, name.encode(),
                                               _cffi.cast("void *", addr)))
        if isinstance(target, int) or target is None:
            self._extern_keep.pop(name, None)
        else:
            self._extern_keep[name] = target
        self._extern_index = None

    def extern_at(self, addr: int) -> tuple | None:
        """(name, byte offset) of the bound extern holding address addr."""
        if self._extern_index is None:
            self._extern_index = sorted((a, size, n) for n, (size, a)
                                        in self.externs().items() if a)
        i = bisect.bisect_right(self._extern_index, (addr, float("inf"))) - 1
        if i >= 0:
            a, size, name = self._extern_index[i]
            if addr - a < size:
                return name, addr - a
        return None

    def externs(self) -> dict:
        """Declared externs: name -> (size, bound address or None), by id."""
        return _externs_declared(self._c)

    def type_id(self, ctype: Any) -> int:
        """tha type id of a cffi ctype or type name ('struct emp', 'emp')."""
        if isinstance(ctype, str):
            ctype = self.ctype(ctype)
        try:
            return self._type_ids[ctype]
        except KeyError:
            raise NotFound(f"type '{self.type_name(ctype)}' is not in this "
                           "schema") from None

    def ctype(self, name: str) -> Any:
        """cffi ctype of a type name as cffi reads it (a typedef, a
        primitive, 'struct emp'), else of 'struct name', then 'union name'.
        Schema types and primitives cost no parse."""
        ctype = self._ctypes.get(name, self._resolved.get(name))
        if ctype is not None:
            return ctype
        try:
            return self.ffi.typeof(name)  # cffi keeps it by the string
        except (cffi.FFIError, cffi.CDefError, TypeError):
            pass
        for kw in ("struct", "union"):
            try:
                ctype = self._named(f"{kw} {name}")
            except (cffi.FFIError, cffi.CDefError, TypeError):
                continue
            self._resolved[name] = ctype  # cffi keeps no failed lookup
            return ctype
        raise NotFound(f"type '{name}' is not in this schema")

    def pointer_type(self, ctype: Any) -> Any:
        """cffi ctype of a pointer to ctype (no parse for schema types)."""
        ptr = self._pointers.get(ctype)
        if ptr is None:  # not laid out with the schema: cffi parses it once
            ptr = self.ffi.typeof(self.ffi.getctype(ctype, "*"))
            self._pointers[ctype] = ptr
        return ptr

    def tag_mask(self, owner: Any, field: str) -> int:
        """The tag mask declared on ``field`` of the struct ctype ``owner``
        (``/* tha: tag_mask=0x1 */``), 0 for an untagged field."""
        return self._masks.get((self._names.get(owner, owner.cname), field), 0)

    def ctype_of(self, type_id: int) -> Any:
        return self._by_id[type_id]

    def type_name(self, ctype: Any) -> str:
        """'struct emp' for its ctype, even when cffi calls it by a typedef."""
        return self._names.get(ctype, ctype.cname)

    def type_names(self) -> list:
        return [self.type_name(t) for tid, t in sorted(self._by_id.items())
                if tid >= lib.THA_T_FIRST_USER]

    def __repr__(self) -> str:
        return f"<tha.Schema {len(self.type_names())} types fp={self.fingerprint:016x}>"


def _user_kinds(c) -> dict:
    """'emp' -> 'struct', 'u' -> 'union' for the structs and unions of the
    C schema c (not its implicit pointer types)."""
    info = _cffi.new("tha_type_info_t *")
    kinds = {}
    for tid in range(lib.THA_T_FIRST_USER, lib.tha_schema_type_count(c)):
        if lib.tha_schema_type_info(c, tid, info) == 0:
            name = _cffi.string(info.name).decode()
            if not name.endswith("*"):
                kinds[name] = "union" if info.is_union else "struct"
    return kinds


def _pointer_types(c) -> list:
    """Names of the implicit pointer types of the C schema c ("emp*")."""
    info = _cffi.new("tha_type_info_t *")
    out = []
    for tid in range(lib.THA_T_FIRST_USER, lib.tha_schema_type_count(c)):
        if lib.tha_schema_type_info(c, tid, info) == 0:
            name = _cffi.string(info.name).decode()
            if name.endswith("*"):
                out.append(name)
    return out


def _pointer_spelling(name: str, kinds: dict) -> str:
    """C for a (pointer) type's canonical name: 'emp**' -> 'struct emp **',
    'bool*' -> '_Bool *', 'emp' -> 'struct emp'."""
    base = name.rstrip("*")
    stars = name[len(base):]
    base = f"{kinds[base]} {base}" if base in kinds else base.replace("bool", "_Bool")
    return f"{base} {stars}" if stars else base


def c_bindings(functions: dict, externs: dict):
    """A C schema holding only bindings, for tha_schema_bind_from: function
    names to cffi function pointers (or int addresses), extern names to
    what Schema.bind_extern takes (a sized cffi array or pointer) or to
    ``(cdata_or_address, size)``. The caller keeps the cdata alive."""
    out = _cffi.new("tha_schema_t **")
    check(lib.tha_schema_create(out))
    c = _cffi.gc(out[0], lib.tha_schema_release)
    for name, fn in functions.items():
        try:
            addr = fn if isinstance(fn, int) else int(_cffi.cast("uintptr_t", fn))
        except TypeError:
            raise SchemaError(f"function '{name}': expected a cffi function pointer "
                              f"or an int address, not {type(fn).__name__}") from None
        _check_c(c, lib.tha_schema_add_func(c, name.encode(),
                                            _cffi.cast("void(*)(void)", addr)))
    for name, spec in externs.items():
        target, size = _extern_spec(_cffi, name, spec)
        addr = 0 if target is None else _extern_target(_cffi, target, f"extern '{name}'")[0]
        _check_c(c, lib.tha_schema_add_extern(c, name.encode(), size,
                                              _cffi.cast("void *", addr)))
    return c


def _extern_spec(ffi, name: str, spec) -> tuple:
    """(what to bind it to or None, declared size) of an extern given as a
    sized cffi array or pointer, or as (cdata_or_address_or_None, size)."""
    where = f"extern '{name}'"
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], int):
            raise SchemaError(f"{where}: expected (cdata_or_address, size), got {spec!r}")
        return spec
    _addr, size = _extern_target(ffi, spec, where)
    if size is None:
        raise SchemaError(f"{where}: the size of {spec!r} is unknown: give "
                          "(cdata_or_address, size)")
    return spec, size


def _check_c(c, rc: int) -> int:
    """check() with the C schema's message."""
    return check(rc, lambda: lib.tha_schema_errmsg(c))


def _functions_declared(c) -> dict:
    """Declared function names of a C schema with their bound addresses."""
    out = {}
    name = _cffi.new("const char **")
    fn = _cffi.new("void (**)(void)")
    for i in range(lib.tha_schema_func_count(c)):
        check(lib.tha_schema_func_info(c, i, name, fn))
        out[_cffi.string(name[0]).decode()] = int(_cffi.cast("uintptr_t", fn[0]))
    return out


def _externs_declared(c) -> dict:
    """Declared externs of a C schema: name -> (size, address or None)."""
    out = {}
    name = _cffi.new("const char **")
    size = _cffi.new("size_t *")
    addr = _cffi.new("const void **")
    for i in range(lib.tha_schema_extern_count(c)):
        check(lib.tha_schema_extern_info(c, i, name, size, addr))
        a = int(_cffi.cast("uintptr_t", addr[0]))
        out[_cffi.string(name[0]).decode()] = (size[0], a or None)
    return out
