#include "TestFiles.h"

#include "llmir/model/Checkpoint.h"
#include "llmir/model/Float16.h"
#include "llmir/model/Safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace llmir::model {
namespace {

using testing::SafetensorsBuilder;
using testing::TempDir;
using testing::toBytes;
using ::testing::HasSubstr;

std::vector<float> floats(std::span<const std::byte> bytes) {
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

class SafetensorsTest : public ::testing::Test {
protected:
  /// Opens a file with the given raw contents and returns the error message.
  std::string openError(const std::string &contents) {
    const std::string path = dir_.file("bad.safetensors");
    testing::writeFile(path, contents);
    Result<SafetensorsFile> file = SafetensorsFile::open(path);
    EXPECT_FALSE(file.isOk());
    if (file.isOk())
      return "";
    EXPECT_THAT(file.message(), HasSubstr(path)); // every error names the file
    return file.message();
  }
  std::string tensorHeader(const std::string &entry) {
    return "{\"w\":" + entry + "}";
  }

  TempDir dir_;
};

TEST_F(SafetensorsTest, ReadsF32AndSlicesAlongEachDim) {
  const std::string path = dir_.file("a.safetensors");
  SafetensorsBuilder()
      .add("matrix", "F32", {2, 3}, toBytes<float>({1, 2, 3, 4, 5, 6}))
      .add("ids", "I64", {2}, toBytes<int64_t>({7, 8}))
      .write(path);
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.isOk()) << file.message();
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->tensors()[0].name, "matrix"); // file order
  EXPECT_EQ(file->metadata().at("format"), "pt");
  const TensorInfo *info = file->find("matrix");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::F32);
  EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(info->byteSize, 24u);
  EXPECT_EQ(floats(file->bytes(*info)), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(file->find("missing"), nullptr);

  EXPECT_EQ(*file->readAsF32("matrix"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(*file->readAsF32("matrix", 0, 1, 1), (std::vector<float>{4, 5, 6}));
  EXPECT_EQ(*file->readAsF32("matrix", 1, 1, 2), (std::vector<float>{2, 3, 5, 6}));
  EXPECT_EQ(*file->readAsF32("matrix", 1, 2), (std::vector<float>{3, 6}));
  EXPECT_EQ(*file->readAsF32("matrix", 1, 3, 0), (std::vector<float>{}));
  Result<std::vector<int64_t>> shape = sliceShape(*info, {1, 1, 2}, path);
  EXPECT_EQ(*shape, (std::vector<int64_t>{2, 2}));

  Result<std::vector<std::byte>> ids = file->readSliceRaw("ids", 0, 1, 1);
  ASSERT_TRUE(ids.isOk()) << ids.message();
  int64_t id = 0;
  std::memcpy(&id, ids->data(), sizeof(id));
  EXPECT_EQ(id, 8);
  EXPECT_THAT(file->readAsF32("ids").message(), HasSubstr("dtype I64"));
  EXPECT_THAT(file->readAsF32("nope").message(), HasSubstr("no tensor named 'nope'"));
  EXPECT_THAT(file->readAsF32("matrix", 2).message(), HasSubstr("out of range for rank 2"));
  EXPECT_THAT(file->readAsF32("matrix", 1, 2, 2).message(), HasSubstr("outside [0, 3)"));
  EXPECT_THAT(file->readAsF32("matrix", 0, -1, 1).message(), HasSubstr("outside [0, 2)"));
  EXPECT_THAT(file->readAsF32("matrix", -1, 1).message(), HasSubstr("need a dimension"));

  SafetensorsFile moved = std::move(file).value();
  EXPECT_EQ(*moved.readAsF32("matrix", 0, 0, 1), (std::vector<float>{1, 2, 3}));
}

TEST_F(SafetensorsTest, WidensBf16AndF16AndKeepsRawBf16) {
  const std::string path = dir_.file("half.safetensors");
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc040, 0x7f80, 0x0001}; // 1, -3, inf, tiny
  const std::vector<uint16_t> f16 = {0x3c00, 0x0001, 0xfc00, 0x7bff, 0x3800, 0x8000};
  SafetensorsBuilder()
      .add("b", "BF16", {2, 2}, toBytes(bf16))
      .add("h", "F16", {2, 3}, toBytes(f16))
      .write(path);
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.isOk()) << file.message();

  Result<std::vector<float>> b = file->readAsF32("b");
  ASSERT_TRUE(b.isOk()) << b.message();
  EXPECT_EQ((*b)[0], 1.0f);
  EXPECT_EQ((*b)[1], -3.0f);
  EXPECT_EQ((*b)[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ((*b)[3], std::ldexp(1.0f, -133));
  EXPECT_EQ(*file->readAsF32("b", 1, 1, 1), (std::vector<float>{-3.0f, std::ldexp(1.0f, -133)}));

  Result<std::vector<std::byte>> raw = file->readSliceRaw("b", 0, 1, 1);
  ASSERT_TRUE(raw.isOk());
  ASSERT_EQ(raw->size(), 4u);
  std::vector<uint16_t> rawBits(2);
  std::memcpy(rawBits.data(), raw->data(), 4);
  EXPECT_EQ(rawBits, (std::vector<uint16_t>{0x7f80, 0x0001}));

  EXPECT_EQ(*file->readAsF32("h"),
            (std::vector<float>{1.0f, std::ldexp(1.0f, -24),
                                -std::numeric_limits<float>::infinity(), 65504.0f, 0.5f,
                                -0.0f}));
  EXPECT_EQ(*file->readAsF32("h", 1, 0, 1), (std::vector<float>{1.0f, 65504.0f}));
}

TEST_F(SafetensorsTest, RejectsMalformedFiles) {
  using testing::safetensorsBytes;
  EXPECT_THAT(openError("abc"), HasSubstr("shorter than the 8-byte header length"));
  EXPECT_THAT(openError(safetensorsBytes(1000, "{}", "")), HasSubstr("exceeds the file size"));
  EXPECT_THAT(openError(safetensorsBytes(uint64_t{200} << 20, "{}", "")),
              HasSubstr("too large"));
  EXPECT_THAT(openError(safetensorsBytes("{\"w\": [", "")), HasSubstr("invalid JSON"));
  EXPECT_THAT(openError(safetensorsBytes("[]", "")), HasSubstr("must be a JSON object"));
  const std::string data(16, '\0');
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"Q7","shape":[2],"data_offsets":[0,8]})"), data)),
              HasSubstr("tensor 'w': unknown dtype 'Q7'"));
  EXPECT_THAT(openError(safetensorsBytes(tensorHeader(R"({"shape":[2],"data_offsets":[0,8]})"),
                                         data)),
              HasSubstr("missing string field 'dtype'"));
  EXPECT_THAT(openError(safetensorsBytes(tensorHeader(R"({"dtype":"F32","data_offsets":[0,8]})"),
                                         data)),
              HasSubstr("missing array field 'shape'"));
  EXPECT_THAT(openError(safetensorsBytes(tensorHeader(R"({"dtype":"F32","shape":[2]})"), data)),
              HasSubstr("missing field 'data_offsets'"));
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"F32","shape":[2],"data_offsets":[0,24]})"), data)),
              HasSubstr("end 24 is beyond the data region of 16 bytes"));
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), data)),
              HasSubstr("begin 8 is after end 0"));
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), data)),
              HasSubstr("span 8 bytes, but shape [3] of F32 needs 3 x 4 bytes"));
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), data)),
              HasSubstr("negative dimension -2"));
  EXPECT_THAT(openError(safetensorsBytes(
                  tensorHeader(R"({"dtype":"F32","shape":[2],"data_offsets":[-1,8]})"), data)),
              HasSubstr("non-negative"));
  EXPECT_THAT(
      openError(safetensorsBytes(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
          data)),
      HasSubstr("tensor 'b' (bytes [4, 12)) overlaps tensor 'a' (bytes [0, 8))"));

  Result<SafetensorsFile> missing = SafetensorsFile::open(dir_.file("nope.safetensors"));
  EXPECT_THAT(missing.message(), HasSubstr("cannot open"));
}

TEST_F(SafetensorsTest, AcceptsPaddedHeaderAndEmptyTensors) {
  // Writers pad the header with spaces to align the data region.
  const std::string header =
      R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
      R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}    )";
  const std::string path = dir_.file("padded.safetensors");
  testing::writeFile(path, testing::safetensorsBytes(header, toBytes<float>({2.5f})));
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.isOk()) << file.message();
  EXPECT_EQ(*file->readAsF32("w"), (std::vector<float>{2.5f}));
  EXPECT_TRUE(file->readAsF32("e")->empty());
}

TEST_F(SafetensorsTest, ShardedCheckpointSpansFiles) {
  SafetensorsBuilder()
      .add("a", "F32", {2}, toBytes<float>({1, 2}))
      .write(dir_.file("model-00001-of-00002.safetensors"));
  SafetensorsBuilder()
      .add("b", "BF16", {1, 2}, toBytes<uint16_t>({0x4000, 0x4040}))
      .add("c", "F32", {1}, toBytes<float>({9}))
      .write(dir_.file("model-00002-of-00002.safetensors"));
  testing::writeFile(dir_.file("model.safetensors.index.json"),
                     R"({"metadata":{"total_size":20},"weight_map":{)"
                     R"("a":"model-00001-of-00002.safetensors",)"
                     R"("b":"model-00002-of-00002.safetensors",)"
                     R"("c":"model-00002-of-00002.safetensors"}})");
  Result<Checkpoint> checkpoint = Checkpoint::open(dir_.path().string());
  ASSERT_TRUE(checkpoint.isOk()) << checkpoint.message();
  EXPECT_EQ(checkpoint->files().size(), 2u);
  ASSERT_EQ(checkpoint->tensors().size(), 3u);
  EXPECT_EQ(checkpoint->tensors()[1].name, "b");
  EXPECT_EQ(*checkpoint->readAsF32("a"), (std::vector<float>{1, 2}));
  EXPECT_EQ(*checkpoint->readAsF32("b", 1, 1, 1), (std::vector<float>{3}));
  EXPECT_EQ(checkpoint->readSliceRaw("b")->size(), 4u);
  EXPECT_EQ(checkpoint->bytes("c")->size(), 4u);
  EXPECT_THAT(*checkpoint->fileOf("c"), HasSubstr("model-00002-of-00002"));
  EXPECT_EQ(checkpoint->find("zz"), nullptr);
  EXPECT_THAT(checkpoint->readAsF32("zz").message(), HasSubstr("no tensor named 'zz'"));

  // The index must agree with the shards.
  testing::writeFile(dir_.file("model.safetensors.index.json"),
                     R"({"weight_map":{"a":"model-00002-of-00002.safetensors",)"
                     R"("b":"model-00002-of-00002.safetensors"}})");
  EXPECT_THAT(Checkpoint::open(dir_.path().string()).message(),
              HasSubstr("maps tensor 'a' to model-00002-of-00002.safetensors, but that "
                        "file has no such tensor"));
  testing::writeFile(dir_.file("model.safetensors.index.json"),
                     R"({"weight_map":{"a":"missing.safetensors"}})");
  EXPECT_THAT(Checkpoint::open(dir_.path().string()).message(), HasSubstr("cannot open"));
  testing::writeFile(dir_.file("model.safetensors.index.json"),
                     R"({"weight_map":{"a":"../x.safetensors"}})");
  EXPECT_THAT(Checkpoint::open(dir_.path().string()).message(),
              HasSubstr("must be a file name in the same directory"));
}

TEST_F(SafetensorsTest, CheckpointOpensSingleFileAndRejectsEmptyDir) {
  EXPECT_THAT(Checkpoint::open(dir_.path().string()).message(),
              HasSubstr("has neither model.safetensors"));
  SafetensorsBuilder().add("x", "F32", {1}, toBytes<float>({4})).write(dir_.file("model.safetensors"));
  Result<Checkpoint> checkpoint = Checkpoint::open(dir_.path().string());
  ASSERT_TRUE(checkpoint.isOk()) << checkpoint.message();
  EXPECT_EQ(*checkpoint->readAsF32("x"), (std::vector<float>{4}));
  EXPECT_TRUE(Checkpoint::open(dir_.file("model.safetensors")).isOk());
}

} // namespace
} // namespace llmir::model
