#pragma once
// Failures that every rank agrees on (docs/parallelism.md, "Failures").
//
// Code that runs between collectives on several ranks (a rank's part of a checkpoint write, a
// file only rank 0 writes while the others wait) must not let one rank throw while the others go
// on into the next collective: they would wait there forever, and a parallel HDF5 file left open
// would make even the unwinding hang (its close is collective). run_agreed captures whatever the
// step raises on this rank, then all ranks learn in one all-reduce whether any rank failed;
// if one did, every rank throws the same error, naming the failed ranks and their messages, at
// the same point of the collective sequence. The caller can then take the abort path together
// (abandon the shared file, remove the partial output) instead of a collective close.

#include <functional>
#include <string>

#include "comm/communicator.h"

namespace routemoe::comm {

// Runs `step` on this rank and agrees on its outcome over `c` (collective: every rank calls it
// in the same order; one all-reduce, plus an all-gather of the messages when a rank failed).
// When any rank failed, every rank throws Error(kind) with detail
//   "<what>: failed on rank R: <R's message>[; rank S: <S's message>]"
// where kind is the failed rank's own error kind (Io for a std::system_error, Check for
// anything else that is not a routemoe::Error) and each message is truncated to 400 bytes.
void run_agreed(Communicator& c, const std::string& what, const std::function<void()>& step);

}  // namespace routemoe::comm
