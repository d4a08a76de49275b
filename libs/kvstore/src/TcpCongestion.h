// The TCP congestion control of the sockets UCX opens. UCX (1.13) sets
// TCP_NODELAY and buffer sizes on its sockets but has no option for the
// congestion control, so they take the host's default. Where that is BBR
// (this project's CI hosts), a 1 MiB block over TCP loopback took ~3x as
// long as under CUBIC or Reno (docs/performance.md, "branch kv14"). The
// algorithm must be set before the socket connects: a socket that ran BBR
// keeps the kernel's internal pacing after switching (setting CUBIC on the
// connected sockets left half the puts as slow), so the setting goes in
// where UCX creates its sockets.
#pragma once

#include <string>

namespace llmir::kvstore {

/// From now on, every IPv4/IPv6 stream socket that UCX's libraries (those
/// loaded in this process whose file name starts with "libuc": libucs,
/// libuct, libucp and UCX's transport modules) create gets the first of
/// `algorithms` (comma-separated) the kernel lets this process set: an
/// unprivileged process may set those in
/// net.ipv4.tcp_allowed_congestion_control, which always includes "reno".
/// Their calls to socket(2) are redirected (their GOT entries) to a wrapper
/// that calls socket(2) and then sets TCP_CONGESTION; the connections a
/// listening socket accepts inherit its algorithm. Process-wide: the latest
/// non-empty `algorithms` applies to every UCX worker of the process; ""
/// changes nothing. Returns the number of GOT entries now redirected (0:
/// no loaded UCX library imports socket(2), nothing changes).
int useTcpCongestionForUcx(const std::string &algorithms);

/// The congestion control of TCP socket `fd` ("" if it cannot be read).
std::string tcpCongestionOf(int fd);

} // namespace llmir::kvstore
