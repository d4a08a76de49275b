#include "llmir/serving/OutputText.h"

#include <algorithm>

namespace llmir::serving {

namespace {
bool isContinuationByte(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}
} // namespace

OutputText::OutputText(const model::Tokenizer &tokenizer, std::vector<std::string> stop)
    : decoder_(tokenizer, /*skipSpecialTokens=*/true), stop_(std::move(stop)) {
  for (const std::string &s : stop_)
    if (!s.empty())
      holdBack_ = std::max(holdBack_, s.size() - 1);
}

Result<OutputText::Delta> OutputText::push(int32_t id, bool checkStop) {
  Delta delta;
  if (stopped_)
    return delta;
  auto piece = decoder_.push(id);
  if (!piece)
    return piece.status();
  const size_t before = text_.size();
  text_ += *piece;
  if (checkStop && !stop_.empty()) {
    // A new match must end inside the new piece.
    const size_t from = before > holdBack_ ? before - holdBack_ : 0;
    size_t cut = std::string::npos;
    for (const std::string &s : stop_)
      cut = std::min(cut, text_.find(s, from));
    if (cut != std::string::npos) {
      text_.resize(std::max(cut, released_));
      stopped_ = true;
      delta.stopped = true;
      delta.text = text_.substr(released_);
      released_ = text_.size();
      return delta;
    }
  }
  size_t end = text_.size() > holdBack_ ? text_.size() - holdBack_ : 0;
  while (end > released_ && end < text_.size() && isContinuationByte(text_[end]))
    --end; // never split a character at the hold-back boundary
  if (end > released_) {
    delta.text = text_.substr(released_, end - released_);
    released_ = end;
  }
  return delta;
}

std::string OutputText::finish() {
  if (!stopped_)
    text_ += decoder_.flush();
  std::string rest = text_.substr(std::min(released_, text_.size()));
  released_ = text_.size();
  return rest;
}

} // namespace llmir::serving
