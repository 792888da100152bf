#pragma once
/// \file A SentencePiece model file (`spiece.model`, `tokenizer.model`; Kudo & Richardson 2018) run by the
/// SentencePiece library itself (Debian's libsentencepiece-dev), which CMake finds and announces by defining
/// POLYFORMER_HAVE_SENTENCEPIECE on the polyformer target. Without it, opening such a file says how to get it, or
/// to use the directory's tokenizer.json instead.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif

#include "polyformer/core/error.hpp"
#include "polyformer/io/file.hpp"

namespace polyformer::tokenizers {

/// A loaded SentencePiece model: ids of text and text of ids, exactly as the library computes them. Immutable.
class SentencePieceModel {
 public:
  /// Reads the model file; format_error naming it when it cannot be read or parsed, or when polyformer was built
  /// without the SentencePiece library.
  static std::shared_ptr<const SentencePieceModel> open(const std::string& path) {
    using polyformer::detail::cat;
#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
    const std::vector<unsigned char> bytes = io::detail::read_file(path, "SentencePiece model");
    auto model = std::shared_ptr<SentencePieceModel>(new SentencePieceModel());
    const auto status = model->processor_.LoadFromSerializedProto(
        std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (!status.ok()) throw format_error(cat(path, ": not a SentencePiece model (", status.ToString(), ")"));
    return model;
#else
    throw format_error(cat(path, ": a SentencePiece model, and polyformer was built without the SentencePiece library "
                                 "(install libsentencepiece-dev and reconfigure, or use the directory's tokenizer.json)"));
#endif
  }

  /// The number of pieces (ids 0 .. size - 1).
  int size() const;
  /// The ids of `text`, without any special token.
  std::vector<int> encode(std::string_view text) const;
  /// The text of `ids` (all ordinary pieces; control pieces are dropped, as the library does).
  std::string decode(const std::vector<int>& ids) const;
  /// The piece of `id`.
  std::string piece(int id) const;
  /// The id of a piece, or -1.
  int id_of(const std::string& piece) const;
  /// Whether `id` is a control piece (<s>, </s>, <pad>).
  bool is_control(int id) const;
  int bos_id() const;
  int eos_id() const;
  /// The unknown piece's id.
  int unk_id() const;

 private:
  SentencePieceModel() = default;
#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
  sentencepiece::SentencePieceProcessor processor_;
#endif
};

#if defined(POLYFORMER_HAVE_SENTENCEPIECE)
inline int SentencePieceModel::size() const { return processor_.GetPieceSize(); }
inline std::vector<int> SentencePieceModel::encode(std::string_view text) const {
  return processor_.EncodeAsIds(text);
}
inline std::string SentencePieceModel::decode(const std::vector<int>& ids) const { return processor_.DecodeIds(ids); }
inline std::string SentencePieceModel::piece(int id) const { return processor_.IdToPiece(id); }
inline int SentencePieceModel::id_of(const std::string& piece) const {
  const int id = processor_.PieceToId(piece);
  return id == processor_.unk_id() && piece != processor_.IdToPiece(id) ? -1 : id;
}
inline bool SentencePieceModel::is_control(int id) const { return processor_.IsControl(id); }
inline int SentencePieceModel::bos_id() const { return processor_.bos_id(); }
inline int SentencePieceModel::eos_id() const { return processor_.eos_id(); }
inline int SentencePieceModel::unk_id() const { return processor_.unk_id(); }
#else  // never reached: open() throws
inline int SentencePieceModel::size() const { return 0; }
inline std::vector<int> SentencePieceModel::encode(std::string_view) const { return {}; }
inline std::string SentencePieceModel::decode(const std::vector<int>&) const { return {}; }
inline std::string SentencePieceModel::piece(int) const { return {}; }
inline int SentencePieceModel::id_of(const std::string&) const { return -1; }
inline bool SentencePieceModel::is_control(int) const { return false; }
inline int SentencePieceModel::bos_id() const { return -1; }
inline int SentencePieceModel::eos_id() const { return -1; }
inline int SentencePieceModel::unk_id() const { return -1; }
#endif

}  // namespace polyformer::tokenizers
