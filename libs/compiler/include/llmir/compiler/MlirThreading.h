// Whether the compiler's MLIRContexts run MLIR's thread pool (parallel
// verification and pass execution over functions).
#pragma once

#include "mlir/IR/MLIRContext.h"

namespace llmir::compiler {

/// Enabled, except in ThreadSanitizer builds: Debian's MLIR/LLVM 15 is not
/// instrumented, so TSan does not see the pool's synchronisation (the futex
/// wait behind std::future in llvm::ThreadPool) and reports the pool's
/// workers racing with the inline std::future code compiled into our objects
/// (docs/reliability.md, "Fuzzing and sanitizers"). Our own threads are
/// unaffected; TSan could not check the pool's code either way.
inline mlir::MLIRContext::Threading contextThreading() {
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
  return mlir::MLIRContext::Threading::DISABLED;
#endif
#endif
#if defined(__SANITIZE_THREAD__) // GCC's spelling
  return mlir::MLIRContext::Threading::DISABLED;
#endif
  return mlir::MLIRContext::Threading::ENABLED;
}

} // namespace llmir::compiler
