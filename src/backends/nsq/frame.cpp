#include "frame.hpp"

#include <algorithm>

namespace ferry::nsq {
namespace {

std::uint64_t read_u64(std::string_view b) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
  return v;
}

void append_u64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

void append_u16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

// Drops consumed bytes once they make up most of the buffer, so that a long stream
// neither grows the buffer without bound nor moves bytes on every frame.
void compact(std::string& buffer, std::size_t& start) {
  if (start == buffer.size()) {
    buffer.clear();
    start = 0;
  } else if (start > 65536 && start > buffer.size() / 2) {
    buffer.erase(0, start);
    start = 0;
  }
}

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

}  // namespace

void append_u32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

std::uint32_t read_u32(std::string_view b) {
  return (std::uint32_t{static_cast<unsigned char>(b[0])} << 24) |
         (std::uint32_t{static_cast<unsigned char>(b[1])} << 16) |
         (std::uint32_t{static_cast<unsigned char>(b[2])} << 8) | std::uint32_t{static_cast<unsigned char>(b[3])};
}

std::optional<WireMessage> parse_message(std::string_view data) {
  if (data.size() < kMessageHeaderSize) return std::nullopt;
  WireMessage m;
  m.timestamp_ns = static_cast<std::int64_t>(read_u64(data));
  m.attempts =
      static_cast<std::uint16_t>((static_cast<unsigned char>(data[8]) << 8) | static_cast<unsigned char>(data[9]));
  std::copy_n(data.begin() + 10, kMessageIdSize, m.id.begin());
  m.body.assign(data.substr(kMessageHeaderSize));
  return m;
}

std::string encode_message(const WireMessage& message) {
  std::string out;
  out.reserve(kMessageHeaderSize + message.body.size());
  append_u64(out, static_cast<std::uint64_t>(message.timestamp_ns));
  append_u16(out, message.attempts);
  out.append(message.id.data(), message.id.size());
  out += message.body;
  return out;
}

std::string encode_frame(FrameType type, std::string_view data) {
  std::string out;
  out.reserve(8 + data.size());
  append_u32(out, static_cast<std::uint32_t>(data.size() + 4));
  append_u32(out, static_cast<std::uint32_t>(type));
  out.append(data);
  return out;
}

void FrameReader::feed(std::string_view bytes) {
  if (failed()) return;
  buffer_.append(bytes);
}

std::optional<Frame> FrameReader::next() {
  if (failed()) return std::nullopt;
  std::string_view available(buffer_.data() + start_, buffer_.size() - start_);
  if (available.size() < 4) return std::nullopt;
  const std::uint32_t size = read_u32(available);
  if (size < 4) {
    error_ = "frame size " + std::to_string(size) + " is smaller than its 4-byte frame type";
    return std::nullopt;
  }
  if (size > max_frame_size_) {
    error_ = "frame of " + std::to_string(size) + " bytes exceeds the bound of " + std::to_string(max_frame_size_) +
             " bytes";
    return std::nullopt;
  }
  if (available.size() < 4 + std::size_t{size}) return std::nullopt;
  const std::uint32_t type = read_u32(available.substr(4));
  if (type > 2) {
    error_ = "unknown frame type " + std::to_string(type);
    return std::nullopt;
  }
  Frame frame{static_cast<FrameType>(type), std::string(available.substr(8, size - 4))};
  if (frame.type == FrameType::message && frame.data.size() < kMessageHeaderSize) {
    error_ = "message frame of " + std::to_string(frame.data.size()) + " bytes is shorter than the " +
             std::to_string(kMessageHeaderSize) + "-byte message header";
    return std::nullopt;
  }
  start_ += 4 + std::size_t{size};
  compact(buffer_, start_);
  return frame;
}

bool command_has_body(std::string_view name) noexcept {
  return name == "IDENTIFY" || name == "AUTH" || name == "PUB" || name == "DPUB" || name == "MPUB";
}

void CommandReader::feed(std::string_view bytes) {
  if (failed()) return;
  buffer_.append(bytes);
}

std::optional<Command> CommandReader::next() {
  if (failed()) return std::nullopt;
  std::string_view available(buffer_.data() + start_, buffer_.size() - start_);
  if (!magic_seen_) {
    if (available.size() < kMagicV2.size()) return std::nullopt;
    if (available.substr(0, kMagicV2.size()) != kMagicV2) {
      error_ = "E_BAD_PROTOCOL bad protocol magic";
      return std::nullopt;
    }
    magic_seen_ = true;
    start_ += kMagicV2.size();
    available.remove_prefix(kMagicV2.size());
  }
  const auto newline = available.find('\n');
  if (newline == std::string_view::npos) {
    if (available.size() > max_line_) error_ = "E_INVALID command line longer than " + std::to_string(max_line_);
    return std::nullopt;
  }
  if (newline > max_line_) {
    error_ = "E_INVALID command line longer than " + std::to_string(max_line_);
    return std::nullopt;
  }
  std::string_view line = available.substr(0, newline);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  Command command;
  std::size_t pos = 0;
  while (true) {
    auto space = line.find(' ', pos);
    command.words.emplace_back(line.substr(pos, space == std::string_view::npos ? space : space - pos));
    if (space == std::string_view::npos) break;
    pos = space + 1;
  }
  for (char c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) {
      error_ = "E_INVALID invalid command";
      return std::nullopt;
    }
  }
  std::size_t consumed = newline + 1;
  if (command_has_body(command.words[0])) {
    if (available.size() < consumed + 4) return std::nullopt;
    const std::uint32_t size = read_u32(available.substr(consumed));
    if (size > max_body_) {
      error_ = "E_BAD_BODY " + command.words[0] + " body too big " + std::to_string(size) + " > " +
               std::to_string(max_body_);
      return std::nullopt;
    }
    if (available.size() < consumed + 4 + size) return std::nullopt;
    command.body.assign(available.substr(consumed + 4, size));
    command.has_body = true;
    consumed += 4 + std::size_t{size};
  }
  start_ += consumed;
  compact(buffer_, start_);
  return command;
}

std::vector<std::string> parse_mpub_body(std::string_view body, std::size_t max_message) {
  if (body.size() < 4) throw Error(Errc::protocol, "E_BAD_BODY MPUB body too short");
  const std::uint32_t count = read_u32(body);
  body.remove_prefix(4);
  if (count == 0) throw Error(Errc::protocol, "E_BAD_BODY MPUB invalid message count 0");
  // Each message takes at least its 4-byte size: a count beyond that is a lie.
  if (count > body.size() / 4) throw Error(Errc::protocol, "E_BAD_BODY MPUB message count exceeds the body");
  std::vector<std::string> out;
  out.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    if (body.size() < 4) throw Error(Errc::protocol, "E_BAD_BODY MPUB body truncated");
    const std::uint32_t size = read_u32(body);
    body.remove_prefix(4);
    if (size == 0) throw Error(Errc::protocol, "E_BAD_MESSAGE MPUB invalid message body size 0");
    if (size > max_message)
      throw Error(Errc::protocol,
                  "E_BAD_MESSAGE MPUB message too big " + std::to_string(size) + " > " + std::to_string(max_message));
    if (body.size() < size) throw Error(Errc::protocol, "E_BAD_BODY MPUB body truncated");
    out.emplace_back(body.substr(0, size));
    body.remove_prefix(size);
  }
  if (!body.empty()) throw Error(Errc::protocol, "E_BAD_BODY MPUB body has trailing bytes");
  return out;
}

std::string encode_command(std::string_view line) {
  std::string out;
  out.reserve(line.size() + 1);
  out.append(line);
  out.push_back('\n');
  return out;
}

std::string encode_command(std::string_view line, std::string_view body) {
  std::string out;
  out.reserve(line.size() + 5 + body.size());
  out.append(line);
  out.push_back('\n');
  append_u32(out, static_cast<std::uint32_t>(body.size()));
  out.append(body);
  return out;
}

std::string encode_mpub(std::string_view topic, const std::vector<std::string>& bodies, std::size_t first,
                        std::size_t last) {
  std::size_t size = 4;
  for (std::size_t i = first; i < last; ++i) size += mpub_overhead(bodies[i].size());
  std::string out;
  out.reserve(topic.size() + 6 + 4 + size);
  out.append("MPUB ");
  out.append(topic);
  out.push_back('\n');
  append_u32(out, static_cast<std::uint32_t>(size));
  append_u32(out, static_cast<std::uint32_t>(last - first));
  for (std::size_t i = first; i < last; ++i) {
    append_u32(out, static_cast<std::uint32_t>(bodies[i].size()));
    out += bodies[i];
  }
  return out;
}

bool valid_nsq_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  if (name.size() > kEphemeralSuffix.size() && name.substr(name.size() - kEphemeralSuffix.size()) == kEphemeralSuffix)
    name.remove_suffix(kEphemeralSuffix.size());
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string encode_envelope(const Message& message) {
  std::string headers = encode_headers(message.headers);
  std::string out;
  out.reserve(4 + 1 + 1 + 8 + 2 + message.id.size() + 4 + (message.key ? message.key->size() : 0) + 4 + headers.size() +
              message.payload.size());
  out.append(kEnvelopeMagic);
  out.push_back(1);
  out.push_back(message.key ? 1 : 0);
  append_u64(out, static_cast<std::uint64_t>(to_unix_ms(message.timestamp)));
  const std::size_t id_size = std::min<std::size_t>(message.id.size(), 0xffff);
  append_u16(out, static_cast<std::uint16_t>(id_size));
  out.append(message.id, 0, id_size);
  if (message.key) {
    append_u32(out, static_cast<std::uint32_t>(message.key->size()));
    out += *message.key;
  }
  append_u32(out, static_cast<std::uint32_t>(headers.size()));
  out += headers;
  out += message.payload;
  return out;
}

std::optional<Message> decode_envelope(std::string_view body) {
  if (body.size() < 4 + 1 + 1 + 8 + 2 + 4 || !starts_with(body, kEnvelopeMagic) || body[4] != 1) return std::nullopt;
  const auto flags = static_cast<unsigned char>(body[5]);
  if (flags > 1) return std::nullopt;
  body.remove_prefix(6);
  Message m;
  m.timestamp = from_unix_ms(static_cast<std::int64_t>(read_u64(body)));
  body.remove_prefix(8);
  const std::size_t id_size = (static_cast<unsigned char>(body[0]) << 8) | static_cast<unsigned char>(body[1]);
  body.remove_prefix(2);
  if (body.size() < id_size) return std::nullopt;
  m.id.assign(body.substr(0, id_size));
  body.remove_prefix(id_size);
  if (flags & 1) {
    if (body.size() < 4) return std::nullopt;
    const std::uint32_t key_size = read_u32(body);
    body.remove_prefix(4);
    if (body.size() < key_size) return std::nullopt;
    m.key = std::string(body.substr(0, key_size));
    body.remove_prefix(key_size);
  }
  if (body.size() < 4) return std::nullopt;
  const std::uint32_t headers_size = read_u32(body);
  body.remove_prefix(4);
  if (body.size() < headers_size) return std::nullopt;
  try {
    m.headers = decode_headers(body.substr(0, headers_size));
  } catch (const std::exception&) {
    return std::nullopt;
  }
  body.remove_prefix(headers_size);
  m.payload.assign(body);
  return m;
}

Errc errc_for(std::string_view error_frame) noexcept {
  if (starts_with(error_frame, "E_INVALID") || starts_with(error_frame, "E_BAD_")) return Errc::invalid_argument;
  return Errc::unavailable;
}

bool error_is_fatal(std::string_view error_frame) noexcept {
  return !(starts_with(error_frame, "E_FIN_FAILED") || starts_with(error_frame, "E_REQ_FAILED") ||
           starts_with(error_frame, "E_TOUCH_FAILED"));
}

std::string hex_id(std::uint64_t value) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) out[static_cast<std::size_t>(i)] = digits[value & 0xf];
  return out;
}

std::string_view id_view(const MessageId& id) noexcept {
  return {id.data(), id.size()};
}

}  // namespace ferry::nsq
