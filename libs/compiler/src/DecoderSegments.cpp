#include "DecoderSegments.h"

#include "llmir/IR/LLMOps.h"

using namespace mlir;

namespace llmir::compiler {

FailureOr<DecoderSegments> segmentDecoder(func::FuncOp step) {
  DecoderSegments segments;
  DecoderSegments::Ops current;
  bool inPrologue = true, seenAttention = false;
  int addsAfterAttention = 0;
  llvm::SmallVector<Operation *> weights;
  for (Operation &op : step.getBody().front().without_terminator()) {
    if (isa<llm::WeightOp>(op)) {
      weights.push_back(&op); // placed with its user below
      continue;
    }
    if (inPrologue && isa<llm::RMSNormOp>(op)) {
      if (current.empty())
        return step.emitError("@" + step.getName().str() +
                              " has no ops before the first llm.rms_norm, "
                              "expected the token embedding");
      segments.prologue = std::move(current);
      segments.prologueOutput = segments.prologue.back()->getResult(0);
      current.clear();
      inPrologue = false;
    }
    current.push_back(&op);
    if (inPrologue)
      continue;
    if (isa<llm::PagedAttentionOp>(op)) {
      seenAttention = true;
      addsAfterAttention = 0;
    } else if (seenAttention && isa<llm::AddOp>(op) && ++addsAfterAttention == 2) {
      segments.layers.push_back(std::move(current));
      segments.layerOutputs.push_back(op.getResult(0));
      current.clear();
      seenAttention = false;
    }
  }
  if (inPrologue || segments.layers.empty() || seenAttention)
    return step.emitError("@" + step.getName().str() +
                          " is not a decoder: expected an embedding, layers "
                          "(rms_norm ... paged_attention ... add ... add) and "
                          "a final norm with logits");
  segments.epilogue = std::move(current);

  // Each weight goes right before its first user's segment.
  llvm::DenseMap<Operation *, DecoderSegments::Ops *> segmentOf;
  for (Operation *op : segments.prologue)
    segmentOf[op] = &segments.prologue;
  for (auto &layer : segments.layers)
    for (Operation *op : layer)
      segmentOf[op] = &layer;
  for (Operation *op : segments.epilogue)
    segmentOf[op] = &segments.epilogue;
  for (Operation *w : weights) {
    if (w->use_empty())
      continue;
    Operation *user = *w->getUsers().begin();
    for (Operation *u : w->getUsers())
      if (u->isBeforeInBlock(user))
        user = u;
    auto it = segmentOf.find(user);
    if (it == segmentOf.end())
      return w->emitError("weight used outside the decoder's segments");
    it->second->insert(it->second->begin(), w);
  }
  return segments;
}

} // namespace llmir::compiler
