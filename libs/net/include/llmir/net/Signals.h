// SIGTERM/SIGINT as a value a service's main thread waits for. A handler
// records the signal and wakes the waits below, so it works whichever thread
// the kernel delivers it to (libraries such as OpenBLAS start threads before
// main, so blocking the signal in main's threads alone is not enough).
#pragma once

#include <chrono>
#include <optional>

namespace llmir::net {

/// Installs the handler for SIGTERM and SIGINT (idempotent). Call early in main.
void installTerminationHandler();

/// Waits for SIGTERM or SIGINT; returns the signal number.
int waitForTerminationSignal();

/// As above, up to `timeout` (0 polls); nullopt when none arrived. A signal
/// that arrived earlier is reported by every later call.
std::optional<int> waitForTerminationSignal(std::chrono::milliseconds timeout);

} // namespace llmir::net
