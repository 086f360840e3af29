#pragma once
// The NSQ V2 wire format, both directions, as pure functions and incremental readers
// (no sockets, no threads): what nsqd sends (size-prefixed frames) and what clients send
// (the magic, then newline-terminated commands, some followed by a size-prefixed body).
// Also ferry's envelope for NSQ message bodies and NSQ's topic and channel name rules.
//
// Everything here follows the TCP protocol specification (nsq.io/clients/tcp_protocol_spec):
// integers are big-endian; a frame is [4-byte size][4-byte frame type][data] where size
// counts the type and the data; a message frame's data is [8-byte timestamp in ns]
// [2-byte attempts][16-byte ASCII id][body].
//
// The readers accept bytes in pieces of any size (a frame split across reads, several
// frames in one read) and refuse, with a reason, anything over their size bound or
// malformed; after a refusal they stay failed (the connection must be closed).

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/error.hpp"
#include "ferry/message.hpp"

namespace ferry::nsq {

inline constexpr std::string_view kMagicV2 = "  V2";
inline constexpr std::string_view kHeartbeat = "_heartbeat_";
inline constexpr std::string_view kOk = "OK";
inline constexpr std::string_view kCloseWait = "CLOSE_WAIT";
inline constexpr std::size_t kMessageIdSize = 16;
// Bytes of a message frame's data before the body.
inline constexpr std::size_t kMessageHeaderSize = 8 + 2 + kMessageIdSize;

enum class FrameType : std::int32_t { response = 0, error = 1, message = 2 };

struct Frame {
  FrameType type = FrameType::response;
  std::string data{};
};

using MessageId = std::array<char, kMessageIdSize>;

// The data of a message frame, parsed.
struct WireMessage {
  std::int64_t timestamp_ns = 0;
  std::uint16_t attempts = 0;
  MessageId id{};
  std::string body{};
};

// Parses a message frame's data; nothing if it is shorter than the fixed header.
std::optional<WireMessage> parse_message(std::string_view data);
// The data of a message frame (what nsqd sends), for the test peer and tests.
std::string encode_message(const WireMessage& message);
// A whole frame: [size][type][data].
std::string encode_frame(FrameType type, std::string_view data);

// Reads frames from a byte stream (the client side). Not thread-safe.
class FrameReader {
 public:
  // `max_frame_size` bounds the size field (type + data), e.g. nsqd's max-msg-size + 30.
  explicit FrameReader(std::size_t max_frame_size) : max_frame_size_(max_frame_size) {}

  // Appends received bytes. Ignored once failed().
  void feed(std::string_view bytes);
  // The next complete frame, or nothing when more bytes are needed or the stream is
  // broken (then failed() is true and error() says why).
  std::optional<Frame> next();
  bool failed() const noexcept { return !error_.empty(); }
  const std::string& error() const noexcept { return error_; }
  // Bytes held that do not yet make a whole frame.
  std::size_t buffered() const noexcept { return buffer_.size() - start_; }

 private:
  std::size_t max_frame_size_;
  std::string buffer_;
  std::size_t start_ = 0;
  std::string error_;
};

// One client command as the server reads it: the words of its line and, for IDENTIFY,
// AUTH, PUB, DPUB and MPUB, its body.
struct Command {
  std::vector<std::string> words{};  // words[0] is the command name
  std::string body{};
  bool has_body = false;
};

// Whether the named command is followed by a size-prefixed body.
bool command_has_body(std::string_view name) noexcept;

// Reads the magic and then commands (the server side). Not thread-safe.
class CommandReader {
 public:
  // `max_line` bounds a command line; `max_body` a command body (nsqd's max-body-size).
  CommandReader(std::size_t max_line, std::size_t max_body) : max_line_(max_line), max_body_(max_body) {}

  void feed(std::string_view bytes);
  // The next command, or nothing when more bytes are needed or the stream is broken
  // (failed(); error() starts with the E_* code nsqd would answer with).
  std::optional<Command> next();
  bool magic_seen() const noexcept { return magic_seen_; }
  bool failed() const noexcept { return !error_.empty(); }
  const std::string& error() const noexcept { return error_; }

 private:
  std::size_t max_line_;
  std::size_t max_body_;
  std::string buffer_;
  std::size_t start_ = 0;
  bool magic_seen_ = false;
  std::string error_;
};

// Parses an MPUB body ([4-byte count]([4-byte size][data])*); each message must be at
// most `max_message`. Throws Error(protocol) with an E_BAD_BODY / E_BAD_MESSAGE reason.
std::vector<std::string> parse_mpub_body(std::string_view body, std::size_t max_message);

// Client commands, encoded.
void append_u32(std::string& out, std::uint32_t value);
std::uint32_t read_u32(std::string_view bytes);                            // the first four bytes, big-endian
std::string encode_command(std::string_view line);                         // "LINE\n", no body
std::string encode_command(std::string_view line, std::string_view body);  // "LINE\n[size][body]"
// "MPUB topic\n[size][count]([size][body])*" from bodies [first, last).
std::string encode_mpub(std::string_view topic, const std::vector<std::string>& bodies, std::size_t first,
                        std::size_t last);
// Bytes encode_mpub adds for one body of `size` bytes.
inline constexpr std::size_t mpub_overhead(std::size_t size) {
  return size + 4;
}

// NSQ names: 1 to 64 characters from [.a-zA-Z0-9_-], optionally ending in "#ephemeral"
// (the suffix counts towards the 64).
bool valid_nsq_name(std::string_view name) noexcept;
inline constexpr std::string_view kEphemeralSuffix = "#ephemeral";
inline constexpr std::size_t kMaxNameLength = 64;

// ferry's envelope: NSQ bodies are opaque bytes, so a ferry message travels as
//   [4]  magic 0xFE 'F' 'R' 'Y'
//   [1]  version 1
//   [1]  flags: bit 0 = has key
//   [8]  timestamp, milliseconds since the Unix epoch (signed)
//   [2]  id length, then the id
//   [4]  key length, then the key (only with flag bit 0)
//   [4]  headers length, then the headers (ferry::encode_headers)
//   the rest: the payload
inline constexpr std::string_view kEnvelopeMagic =
    "\xFE"
    "FRY";
std::string encode_envelope(const Message& message);
// The message an envelope holds; nothing if `body` is not a well-formed envelope (a body
// from another NSQ client: the caller treats it as a plain payload).
std::optional<Message> decode_envelope(std::string_view body);

// The ferry error code for an nsqd error frame ("E_BAD_TOPIC reason..."): invalid_argument
// for E_INVALID, E_BAD_*; unavailable for the rest (E_PUB_FAILED, E_UNAUTHORIZED, ...).
Errc errc_for(std::string_view error_frame) noexcept;
// Whether nsqd keeps the connection open after this error (E_FIN_FAILED, E_REQ_FAILED,
// E_TOUCH_FAILED); every other error closes it.
bool error_is_fatal(std::string_view error_frame) noexcept;

std::string hex_id(std::uint64_t value);  // 16 lower-case hex digits
std::string_view id_view(const MessageId& id) noexcept;

}  // namespace ferry::nsq
