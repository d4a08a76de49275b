#include "llmir/engine/Device.h"

#include <charconv>

namespace llmir::engine {

Result<Device> Device::parse(std::string_view text) {
  const auto invalid = [&] {
    return Status::error("device '" + std::string(text) +
                         "' is not one of: cpu, cuda, cuda:N (N a device index)");
  };
  if (text == "cpu")
    return Device{};
  if (text == "cuda")
    return Device{Kind::Cuda, 0};
  if (!text.starts_with("cuda:"))
    return invalid();
  std::string_view number = text.substr(5);
  int index = -1;
  auto [end, error] =
      std::from_chars(number.data(), number.data() + number.size(), index);
  if (number.empty() || error != std::errc() ||
      end != number.data() + number.size() || index < 0)
    return invalid();
  return Device{Kind::Cuda, index};
}

std::string Device::name() const {
  return isCuda() ? "cuda:" + std::to_string(index) : "cpu";
}

} // namespace llmir::engine
