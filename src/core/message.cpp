#include "ferry/message.hpp"

#include <array>
#include <cstdint>
#include <random>

#include "ferry/error.hpp"

namespace ferry {
namespace {

std::uint64_t random_word() {
  thread_local std::mt19937_64 engine{[] {
    std::random_device device;
    std::seed_seq seq{device(), device(), device(), device()};
    return std::mt19937_64(seq);
  }()};
  return engine();
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get_u32(std::string_view& in) {
  if (in.size() < 4) throw Error(Errc::not_ferry_data, "stored message headers are truncated");
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  in.remove_prefix(4);
  return v;
}

std::string_view get_bytes(std::string_view& in) {
  std::uint32_t n = get_u32(in);
  if (in.size() < n) throw Error(Errc::not_ferry_data, "stored message headers are truncated");
  std::string_view s = in.substr(0, n);
  in.remove_prefix(n);
  return s;
}

}  // namespace

void make_uuid(char (&text)[36]) noexcept {
  std::uint64_t hi = random_word();
  std::uint64_t lo = random_word();
  hi = (hi & ~0xf000ULL) | 0x4000ULL;                       // version 4
  lo = (lo & ~(0xc0ULL << 56)) | (0x80ULL << 56);           // RFC 4122 variant
  static constexpr char digits[] = "0123456789abcdef";
  // 8-4-4-4-12 hex digits: hi gives the first 16, lo the last 16.
  int at = 0;
  auto emit = [&](std::uint64_t word, int nibbles) {
    for (int i = 0; i < nibbles; ++i, word <<= 4) text[at++] = digits[word >> 60];
    return word;
  };
  hi = emit(hi, 8);
  text[at++] = '-';
  hi = emit(hi, 4);
  text[at++] = '-';
  emit(hi, 4);
  text[at++] = '-';
  lo = emit(lo, 4);
  text[at++] = '-';
  emit(lo, 12);
}

std::string make_uuid() {
  char text[36];
  make_uuid(text);
  return std::string(text, sizeof text);
}

std::int64_t to_unix_ms(Clock::time_point t) noexcept {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

Clock::time_point from_unix_ms(std::int64_t ms) noexcept {
  return Clock::time_point{std::chrono::duration_cast<Clock::duration>(std::chrono::milliseconds{ms})};
}

Message Message::with_payload(std::string payload) {
  Message m;
  m.payload = std::move(payload);
  stamp(m);
  return m;
}

void stamp(Message& message) {
  if (message.id.empty()) message.id = make_uuid();
  if (message.timestamp == Clock::time_point{}) {
    // Stored with millisecond precision everywhere; keep the value round-trippable.
    message.timestamp = from_unix_ms(to_unix_ms(Clock::now()));
  }
}

std::string encode_headers(const Headers& headers) {
  std::string out;
  if (headers.empty()) return out;
  put_u32(out, static_cast<std::uint32_t>(headers.size()));
  for (const auto& [k, v] : headers) {
    put_u32(out, static_cast<std::uint32_t>(k.size()));
    out += k;
    put_u32(out, static_cast<std::uint32_t>(v.size()));
    out += v;
  }
  return out;
}

Headers decode_headers(std::string_view in) {
  Headers headers;
  if (in.empty()) return headers;
  std::uint32_t n = get_u32(in);
  for (std::uint32_t i = 0; i < n; ++i) {
    std::string k(get_bytes(in));
    std::string v(get_bytes(in));
    headers.insert_or_assign(std::move(k), std::move(v));
  }
  if (!in.empty()) throw Error(Errc::not_ferry_data, "stored message headers have trailing bytes");
  return headers;
}

}  // namespace ferry
