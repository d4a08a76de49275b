// Status and Result<T>: how errors cross library boundaries outside the
// compiler (which uses llvm::Expected / mlir::LogicalResult).
//
// A Status is either OK or carries a message that says what was wrong, where,
// and what was expected. Result<T> holds either a T or a non-OK Status.
// Libraries that throw are wrapped at their edge so that no exception escapes.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace llmir {

class [[nodiscard]] Status {
public:
  Status() = default;
  static Status ok() { return Status(); }
  static Status error(std::string message) {
    Status s;
    s.message_ = std::move(message);
    s.failed_ = true;
    return s;
  }

  bool isOk() const { return !failed_; }
  explicit operator bool() const { return isOk(); }
  const std::string &message() const { return message_; }

  /// Prefix the message with context ("while loading x: <message>").
  Status withContext(const std::string &context) const {
    if (isOk())
      return *this;
    return error(context + ": " + message_);
  }

private:
  std::string message_;
  bool failed_ = false;
};

template <typename T> class [[nodiscard]] Result {
public:
  Result(T value) : value_(std::move(value)) {}
  Result(Status status) : value_(std::move(status)) {
    assert(!std::get<Status>(value_).isOk() &&
           "Result constructed from an OK status carries no value");
  }

  bool isOk() const { return std::holds_alternative<T>(value_); }
  explicit operator bool() const { return isOk(); }

  T &value() & {
    assert(isOk());
    return std::get<T>(value_);
  }
  const T &value() const & {
    assert(isOk());
    return std::get<T>(value_);
  }
  T &&value() && {
    assert(isOk());
    return std::get<T>(std::move(value_));
  }
  T *operator->() { return &value(); }
  const T *operator->() const { return &value(); }
  T &operator*() & { return value(); }
  const T &operator*() const & { return value(); }
  /// `*make()` of a temporary moves its value out (without this overload it
  /// bound to the const one, and std::move(*make()) silently copied).
  T &&operator*() && { return std::move(*this).value(); }

  Status status() const {
    return isOk() ? Status::ok() : std::get<Status>(value_);
  }
  const std::string &message() const {
    static const std::string empty;
    return isOk() ? empty : std::get<Status>(value_).message();
  }

private:
  std::variant<T, Status> value_;
};

/// Returns early from the enclosing function when `expr` (a Status) failed.
#define LLMIR_RETURN_IF_ERROR(expr)                                            \
  do {                                                                         \
    ::llmir::Status llmir_status_ = (expr);                                    \
    if (!llmir_status_.isOk())                                                 \
      return llmir_status_;                                                    \
  } while (0)

} // namespace llmir
