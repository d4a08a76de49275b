// Waiting for the services a mesh test starts: the port a service writes to
// its port file once listening, and an HTTP status on one of its routes.
#pragma once

#include "llmir/net/HttpClient.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

namespace llmir::testing {

inline std::string readFile(const std::filesystem::path &path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

/// Polls until `path` holds a port (a service writes it once listening);
/// 0 after a minute.
inline uint16_t waitForPortFile(const std::filesystem::path &path) {
  for (int i = 0; i < 1200; ++i) {
    std::string text = readFile(path);
    if (!text.empty() && text.back() == '\n')
      return static_cast<uint16_t>(std::stoi(text));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

/// Whether GET `url` answers `status` within `within`.
inline bool waitForStatus(const std::string &url, int status, std::chrono::seconds within) {
  auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = net::httpGet(url, std::chrono::seconds(1));
    if (r && r->status == status)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

} // namespace llmir::testing
