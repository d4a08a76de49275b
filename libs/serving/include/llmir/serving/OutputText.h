// A sequence's output text, built one token at a time: incremental
// detokenization that never splits a UTF-8 character (model::StreamDecoder),
// and stop strings. While stop strings are set, the last (longest stop - 1)
// bytes are held back, so a client never sees the start of a stop string.
#pragma once

#include "llmir/model/Tokenizer.h"

#include <string>
#include <vector>

namespace llmir::serving {

class OutputText {
public:
  /// `tokenizer` must outlive this. Special tokens (EOS) add no text.
  OutputText(const model::Tokenizer &tokenizer, std::vector<std::string> stop);

  struct Delta {
    std::string text;     // newly releasable text (possibly empty)
    bool stopped = false; // a stop string was found; text ends before it
  };
  /// Adds token `id`; looks for stop strings only when `checkStop`.
  Result<Delta> push(int32_t id, bool checkStop);
  /// Releases everything held back (the sequence ended without a stop string).
  std::string finish();

  const std::string &text() const { return text_; }

private:
  model::StreamDecoder decoder_;
  std::vector<std::string> stop_;
  size_t holdBack_ = 0;   // bytes kept unreleased for stop matching
  std::string text_;      // everything decoded so far (cut at a stop string)
  size_t released_ = 0;   // bytes of text_ handed out
  bool stopped_ = false;
};

} // namespace llmir::serving
