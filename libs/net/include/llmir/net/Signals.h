// SIGTERM/SIGINT as a value a service's main thread waits for: block them in
// every thread (call before starting any), then wait on the main thread.
#pragma once

#include <chrono>
#include <optional>

namespace llmir::net {

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it
/// starts afterwards (so they are only delivered through the waits below).
void blockTerminationSignals();

/// Waits for SIGTERM or SIGINT; returns the signal number.
int waitForTerminationSignal();

/// As above, up to `timeout`; nullopt when none arrived.
std::optional<int> waitForTerminationSignal(std::chrono::milliseconds timeout);

} // namespace llmir::net
