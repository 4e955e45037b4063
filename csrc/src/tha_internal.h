/* tha_internal.h — every layer's header at once, for the C tests and the
 * fuzz targets, which poke at internals. No file of libtha includes it: each
 * includes its own layer's header (docs/architecture.md, "Layers";
 * tests/test_layers.py holds them to it).
 */
#ifndef THA_INTERNAL_H
#define THA_INTERNAL_H

#include "base.h"
#include "schema.h"
#include "heap.h"
#include "frame.h"
#include "heapcheck.h"
#include "codec.h"
#include "replication.h"

#endif /* THA_INTERNAL_H */
