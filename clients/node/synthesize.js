#!/usr/bin/env node
// Minimal Node.js client for voice.v1.TtsGatewayService: calls the server-streaming Synthesize RPC (or, with
// --incremental, the bidirectional StreamingSynthesize) and writes the audio to a WAV file. The .proto files are loaded at run time (no generated code) from the copy packaged with the
// client (./proto, made by `npm pack`'s prepack or `make setup` from the repository's proto/); proto-loader resolves
// google/protobuf/*.proto from the copies protobufjs ships.
//
//   voice-synthesize --text "Hello there." --voice NAME --out hello.wav [--target 127.0.0.1:50051]
//                    [--format pcm16|wav] [--rate 24000] [--token TOKEN] [--tls] [--timeout 120] [--max-retries 3]
//                    [--incremental [--words-per-second N]] [--text-input auto|sentences|incremental]
//   llm ... | voice-synthesize --incremental --text - --voice NAME --out out.wav   # speaks while the text is written
//
// --incremental sends the text word by word (paced by --words-per-second), or with --text - each piece of stdin as
// it arrives, as text deltas of a StreamingSynthesize call. --text-input sets the call's text_input_mode (implies
// --incremental): incremental hands every delta to the model at once (voices whose streams_text_input is true),
// sentences synthesizes sentence by sentence, auto is the voice's default.
//
// A call refused with RESOURCE_EXHAUSTED or UNAVAILABLE whose google.rpc.Status (the grpc-status-details-bin
// trailer) carries a RetryInfo is retried after the delay asked for (plus jitter), if no audio has arrived yet: at most
// --max-retries times, each wait capped at 10 s, never past the --timeout deadline (which covers all attempts). A
// retried StreamingSynthesize sends again the text deltas already taken.
//
// Exit status: 0 ok, 1 local error, 2 bad arguments or INVALID_ARGUMENT, 3 NOT_FOUND, 4 FAILED_PRECONDITION,
// 5 UNAVAILABLE/DEADLINE_EXCEEDED, 6 RESOURCE_EXHAUSTED, 7 UNAUTHENTICATED/PERMISSION_DENIED, 8 other gRPC errors
// (the same table as the Python voice-cli).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const WAV_HEADER_BYTES = 44;
const TEXT_INPUT_MODES = {
  auto: 'TEXT_INPUT_MODE_UNSPECIFIED',
  sentences: 'TEXT_INPUT_MODE_SENTENCES',
  incremental: 'TEXT_INPUT_MODE_INCREMENTAL',
};
const MAX_RETRY_DELAY_S = 10;
const RETRYABLE = new Set([grpc.status.RESOURCE_EXHAUSTED, grpc.status.UNAVAILABLE]);

const EXIT_CODES = {
  [grpc.status.INVALID_ARGUMENT]: 2,
  [grpc.status.OUT_OF_RANGE]: 2,
  [grpc.status.NOT_FOUND]: 3,
  [grpc.status.FAILED_PRECONDITION]: 4,
  [grpc.status.UNAVAILABLE]: 5,
  [grpc.status.DEADLINE_EXCEEDED]: 5,
  [grpc.status.RESOURCE_EXHAUSTED]: 6,
  [grpc.status.UNAUTHENTICATED]: 7,
  [grpc.status.PERMISSION_DENIED]: 7,
};

function usage() {
  return [
    'usage: voice-synthesize --text TEXT --voice NAME --out FILE.wav [options]   (or: node synthesize.js ...)',
    '  --text TEXT          text to speak; - reads it from stdin',
    '  --target HOST:PORT   gateway address (env VOICE_TARGET, default 127.0.0.1:50051)',
    '  --format pcm16|wav   encoding requested from the server (default pcm16); the file is always a WAV',
    '  --rate HZ            output sample rate, 0 = the voice\'s native rate (default 0)',
    '  --token TOKEN        bearer token (env VOICE_TOKEN)',
    '  --tls                use TLS with the system roots',
    '  --timeout SECONDS    deadline for the whole stream, retries included (default 120)',
    '  --max-retries N      retries of a call refused with a RetryInfo delay (env VOICE_MAX_RETRIES, default 3)',
    '  --incremental        StreamingSynthesize: send the text word by word; with --text -, stdin as it arrives',
    '  --words-per-second N with --incremental: N words a second from --text (default 0: as fast as possible)',
    '  --text-input MODE    auto|sentences|incremental: how the gateway feeds the model the text; implies --incremental',
  ].join('\n');
}

function parseCommandLine(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      text: { type: 'string' },
      voice: { type: 'string' },
      out: { type: 'string', short: 'o' },
      target: { type: 'string', default: process.env.VOICE_TARGET || '127.0.0.1:50051' },
      format: { type: 'string', default: 'pcm16' },
      rate: { type: 'string', default: '0' },
      token: { type: 'string', default: process.env.VOICE_TOKEN || '' },
      tls: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '120' },
      'max-retries': { type: 'string', default: process.env.VOICE_MAX_RETRIES || '3' },
      incremental: { type: 'boolean', default: false },
      'words-per-second': { type: 'string', default: '0' },
      'text-input': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    process.exit(0);
  }
  for (const required of ['text', 'voice', 'out']) {
    if (!values[required]) throw new UsageError(`--${required} is required`);
  }
  if (!['pcm16', 'wav'].includes(values.format)) throw new UsageError('--format must be pcm16 or wav');
  const rate = Number.parseInt(values.rate, 10);
  const timeout = Number.parseFloat(values.timeout);
  if (!Number.isInteger(rate) || rate < 0) throw new UsageError('--rate must be a non-negative integer');
  if (!(timeout > 0) || !Number.isFinite(timeout)) {
    throw new UsageError('--timeout must be a positive number of seconds');
  }
  const maxRetries = Number(values['max-retries']);
  if (!Number.isInteger(maxRetries) || maxRetries < 0) throw new UsageError('--max-retries must be 0 or more');
  const textInput = values['text-input'];
  if (textInput !== undefined && !(textInput in TEXT_INPUT_MODES)) {
    throw new UsageError(`--text-input must be one of ${Object.keys(TEXT_INPUT_MODES).join(', ')}`);
  }
  const incremental = values.incremental || textInput !== undefined;
  const wordsPerSecond = Number(values['words-per-second']);
  if (!(wordsPerSecond >= 0) || !Number.isFinite(wordsPerSecond)) {
    throw new UsageError('--words-per-second must be 0 or a positive number');
  }
  if (wordsPerSecond > 0 && !incremental) throw new UsageError('--words-per-second needs --incremental');
  if (wordsPerSecond > 0 && values.text === '-') {
    throw new UsageError('--words-per-second paces --text; text from stdin is sent as it arrives');
  }
  return { ...values, rate, timeout, maxRetries, incremental, wordsPerSecond, textInput: textInput || 'auto' };
}

class UsageError extends Error {}

// The .proto files: $VOICE_PROTO_ROOT, else the copy packaged with the client, else (a repository checkout where
// the copy has not been made yet) the repository's proto/.
function protoRoot() {
  if (process.env.VOICE_PROTO_ROOT) return process.env.VOICE_PROTO_ROOT;
  const candidates = [path.join(__dirname, 'proto'), path.resolve(__dirname, '..', '..', 'proto')];
  const found = candidates.find((root) => fs.existsSync(path.join(root, 'voice', 'v1', 'tts_gateway.proto')));
  if (!found) throw new Error(`voice/v1/tts_gateway.proto not found in ${candidates.join(' or ')}`);
  return found;
}

function loadGateway() {
  const root = protoRoot();
  const definition = protoLoader.loadSync(path.join(root, 'voice/v1/tts_gateway.proto'), {
    includeDirs: [root],
    keepCase: false, // fields become lowerCamelCase, as in the JSON mapping
    longs: Number, // sequence numbers and durations fit easily in a double
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).voice.v1.TtsGatewayService;
}

// google.rpc.Status and the details read from it (rpc_status.proto, packaged with the client).
let rpcTypes = null;
function rpc() {
  if (rpcTypes === null) {
    const root = protobuf.loadSync(path.join(__dirname, 'rpc_status.proto'));
    rpcTypes = {
      Status: root.lookupType('google.rpc.Status'),
      RetryInfo: root.lookupType('google.rpc.RetryInfo'),
      BadRequest: root.lookupType('google.rpc.BadRequest'),
    };
  }
  return rpcTypes;
}

// The details of a gRPC error's google.rpc.Status: { retryDelay: seconds or null, violations: [text] }. A trailer
// that does not parse counts as no details: it must never hide the plain status.
function statusDetails(error) {
  const found = { retryDelay: null, violations: [] };
  const values = error && error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (!values.length) return found;
  try {
    const types = rpc();
    const status = types.Status.decode(values[0]);
    for (const detail of status.details) {
      const name = detail.typeUrl.slice(detail.typeUrl.lastIndexOf('/') + 1);
      if (name === 'google.rpc.RetryInfo') {
        const delay = types.RetryInfo.toObject(types.RetryInfo.decode(detail.value), { longs: Number }).retryDelay;
        found.retryDelay = delay ? Math.max(0, (delay.seconds || 0) + (delay.nanos || 0) / 1e9) : 0;
      } else if (name === 'google.rpc.BadRequest') {
        for (const v of types.BadRequest.decode(detail.value).fieldViolations) {
          found.violations.push(`${v.field}: ${v.description}`);
        }
      }
    }
  } catch {
    return { retryDelay: null, violations: [] };
  }
  return found;
}

// The wait before retry number `retry` (1 for the first) of a call refused with a RetryInfo delay `asked`: the
// delay asked for plus a uniformly random share ("full jitter") of a window that doubles with each retry, capped.
// Never shorter than the server asked; clients refused in the same instant do not come back in the same instant.
// VOICE_RETRY_JITTER scales the window (0 turns jitter off).
function jitteredDelay(asked, retry, capS = MAX_RETRY_DELAY_S, jitter = retryJitter(), random = Math.random) {
  const window = asked * 2 ** Math.max(0, retry - 1) * Math.max(0, jitter);
  return Math.min(capS, asked + random() * window);
}

function retryJitter() {
  const value = Number(process.env.VOICE_RETRY_JITTER ?? '1');
  return Number.isFinite(value) && value >= 0 ? value : 1;
}

// Seconds to wait before retry number `retry` of a refused call, or null to give up.
function retryDelay(error, retry, options, deadline) {
  if (retry > options.maxRetries || error.receivedAudio || !RETRYABLE.has(error.code)) return null;
  const asked = statusDetails(error).retryDelay;
  if (asked === null) return null;
  let delay = jitteredDelay(asked, retry);
  if (Date.now() + delay * 1000 >= deadline) delay = Math.min(asked, MAX_RETRY_DELAY_S); // no jitter past it
  return Date.now() + delay * 1000 >= deadline ? null : delay;
}

function statusName(code) {
  return Object.keys(grpc.status).find((key) => grpc.status[key] === code) || String(code);
}

// 44-byte RIFF/WAVE header for mono 16-bit PCM of `dataBytes` bytes.
function wavHeader(sampleRate, dataBytes) {
  const header = Buffer.alloc(WAV_HEADER_BYTES);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + dataBytes, 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(sampleRate, 24);
  header.writeUInt32LE(sampleRate * 2, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(dataBytes, 40);
  return header;
}

// Progress overwrites one line on a terminal; in logs and pipes only the final line is written.
const endLine = () => (process.stderr.isTTY ? '\r\x1b[K' : '');
function progress(text) {
  if (process.stderr.isTTY) process.stderr.write(`${endLine()}${text}`);
}

function seconds(duration) {
  return duration ? Number(duration.seconds || 0) + (duration.nanos || 0) / 1e9 : 0;
}

// Word-sized deltas that keep their whitespace, so the server sees the original text once joined.
function words(text) {
  return text.match(/\S+\s*|\s+/g) || [];
}

// The text deltas of a StreamingSynthesize call, recorded as they are produced so that a retried call can send
// them again: `pieces` so far, `ended` once the source is done; listeners hear of each new piece and of the end.
class TextSource {
  constructor() {
    this.pieces = [];
    this.ended = false;
    this.error = null;
    this.listeners = new Set();
    this.stop = () => {}; // stops producing (set by the producer); called once the call is over
  }

  push(piece) {
    if (!piece) return;
    this.pieces.push(piece);
    for (const listener of this.listeners) listener.piece(piece);
  }

  end(error = null) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    for (const listener of this.listeners) listener.end();
  }

  // Sends every piece so far through `call`, then each new one as it comes; ends the call's input at the end.
  // Returns a function that stops (for a call that failed).
  feed(call) {
    for (const piece of this.pieces) call.write({ text: piece });
    if (this.ended) {
      call.end();
      return () => {};
    }
    const listener = { piece: (piece) => call.write({ text: piece }), end: () => call.end() };
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

// --text word by word, `wordsPerSecond` a second (0: all at once): word i goes out i / wordsPerSecond s after the
// first, so n words take at least (n - 1) / wordsPerSecond s.
function wordSource(text, wordsPerSecond) {
  const source = new TextSource();
  const pieces = words(text);
  if (!(wordsPerSecond > 0)) {
    pieces.forEach((piece) => source.push(piece));
    source.end();
    return source;
  }
  const start = Date.now();
  let index = 0;
  let timer = null;
  source.stop = () => clearTimeout(timer);
  const next = () => {
    if (index >= pieces.length) {
      source.end();
      return;
    }
    source.push(pieces[index]);
    index += 1;
    const wait = start + (index * 1000) / wordsPerSecond - Date.now();
    if (index >= pieces.length) source.end();
    else timer = setTimeout(next, Math.max(0, wait));
  };
  next();
  return source;
}

// stdin as it arrives: each 'data' event (whatever one read returned) is one text delta. The stream's UTF-8
// decoder keeps a character split across two reads whole.
function stdinSource() {
  const source = new TextSource();
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (piece) => source.push(piece));
  process.stdin.on('end', () => source.end());
  process.stdin.on('error', (error) => source.end(error));
  source.stop = () => process.stdin.destroy(); // a writer still holding the pipe must not keep us running
  return source;
}

function readAllStdin() {
  return new Promise((resolve, reject) => {
    const parts = [];
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (part) => parts.push(part));
    process.stdin.on('end', () => resolve(parts.join('')));
    process.stdin.on('error', reject);
  });
}

function outputFormat(options) {
  return {
    encoding: options.format === 'wav' ? 'AUDIO_ENCODING_WAV' : 'AUDIO_ENCODING_PCM16',
    sampleRateHz: options.rate,
    channels: 1,
  };
}

// Starts the call: Synthesize with the whole text, or StreamingSynthesize fed from options.source. Returns the
// call and a function that detaches it from the source.
function startCall(client, options, metadata, deadline) {
  if (!options.incremental) {
    const request = { text: options.text, voice: options.voice, outputFormat: outputFormat(options) };
    return { call: client.synthesize(request, metadata, { deadline }), detach: () => {} };
  }
  const call = client.streamingSynthesize(metadata, { deadline });
  const config = {
    voice: options.voice,
    outputFormat: outputFormat(options),
    textInputMode: TEXT_INPUT_MODES[options.textInput],
  };
  call.write({ config });
  return { call, detach: options.source.feed(call) };
}

function synthesizeOnce(TtsGatewayService, options, deadline) {
  const credentials = options.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const client = new TtsGatewayService(options.target, credentials);
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;

  return new Promise((resolve, reject) => {
    const { call, detach } = startCall(client, options, metadata, deadline);
    const pieces = [];
    let sampleRate = 0;
    let audioSeconds = 0;
    let firstAudio = null;
    let chunks = 0;
    let summary = null;
    call.on('data', (chunk) => {
      chunks += 1;
      sampleRate = chunk.format.sampleRateHz || sampleRate;
      audioSeconds += seconds(chunk.duration);
      if (firstAudio === null && chunk.audio.length > 0) firstAudio = elapsed();
      pieces.push(chunk.audio);
      if (chunk.isFinal) summary = chunk.summary;
      progress(`receiving: ${chunks} chunks, ${audioSeconds.toFixed(2)} s of audio`);
    });
    call.on('error', (error) => {
      detach();
      client.close();
      error.receivedAudio = chunks > 0; // a stream that already delivered audio is never retried
      reject(error);
    });
    call.on('end', () => {
      detach();
      client.close();
      if (options.source && options.source.error) {
        reject(new Error(`cannot read the text from stdin: ${options.source.error.message}`));
        return;
      }
      let pcm = Buffer.concat(pieces);
      // A streamed WAV starts with a header whose sizes say "unknown"; keep only the samples and write a fresh
      // header with the true length. The gateway's WAV header is the canonical 44 bytes (mono PCM16).
      if (options.format === 'wav') {
        if (pcm.length < WAV_HEADER_BYTES || pcm.toString('ascii', 0, 4) !== 'RIFF') {
          reject(new Error('the server sent a WAV stream without a RIFF header'));
          return;
        }
        pcm = pcm.subarray(WAV_HEADER_BYTES);
      }
      if (!sampleRate) {
        reject(new Error('the stream carried no sample rate'));
        return;
      }
      fs.writeFileSync(options.out, Buffer.concat([wavHeader(sampleRate, pcm.length), pcm]));
      resolve({ chunks, audioSeconds, sampleRate, firstAudio, total: elapsed(), summary });
    });
  });
}

async function synthesize(options) {
  const TtsGatewayService = loadGateway();
  const deadline = Date.now() + options.timeout * 1000;
  if (options.incremental) {
    options.source = options.text === '-' ? stdinSource() : wordSource(options.text, options.wordsPerSecond);
  } else if (options.text === '-') {
    options.text = await readAllStdin();
  }
  for (let retry = 1; ; retry += 1) {
    try {
      return await synthesizeOnce(TtsGatewayService, options, deadline);
    } catch (error) {
      const delay = typeof error.code === 'number' ? retryDelay(error, retry, options, deadline) : null;
      if (delay === null) throw error;
      process.stderr.write(
        `${endLine()}${statusName(error.code)}: ${error.details}; retrying in ${delay.toFixed(2)} s ` +
          `(retry ${retry} of ${options.maxRetries})\n`,
      );
      await new Promise((resolve) => setTimeout(resolve, delay * 1000));
    }
  }
}

async function main() {
  let options;
  try {
    options = parseCommandLine(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`error: ${error.message}\n${usage()}\n`);
    return 2;
  }
  try {
    const result = await synthesize(options);
    const rtf = result.audioSeconds > 0 ? (result.total / result.audioSeconds).toFixed(3) : 'n/a';
    const ttfa = result.firstAudio === null ? 'n/a' : `${result.firstAudio.toFixed(3)} s`;
    process.stderr.write(
      `${endLine()}wrote ${options.out}: ${result.audioSeconds.toFixed(2)} s of audio at ${result.sampleRate} Hz, ` +
        `${result.chunks} chunks; time to first audio ${ttfa}, RTF ${rtf}\n`,
    );
    return 0;
  } catch (error) {
    if (options.source) options.source.stop();
    if (typeof error.code === 'number' && error.details !== undefined) {
      // A gRPC status: one line with the code name, the server's message, and what its details add.
      const details = statusDetails(error);
      let line = `error: ${statusName(error.code)}: ${error.details}`;
      const violations = details.violations.join('; ');
      if (violations && !line.includes(violations)) line += ` [${violations}]`;
      if (details.retryDelay !== null) line += ` (retry after ${details.retryDelay} s)`;
      process.stderr.write(`${endLine()}${line.replace(/\s+/g, ' ').trim()}\n`);
      return EXIT_CODES[error.code] || 8;
    }
    process.stderr.write(`${endLine()}error: ${error.message}\n`);
    return 1;
  }
}

// transcribe.js shares the connection, error and retry helpers.
module.exports = {
  EXIT_CODES,
  UsageError,
  protoRoot,
  statusDetails,
  retryDelay,
  jitteredDelay,
  statusName,
  endLine,
  progress,
  seconds,
};

if (require.main === module) {
  main().then((code) => {
    process.exitCode = code;
  });
}
