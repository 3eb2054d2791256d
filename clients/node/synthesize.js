#!/usr/bin/env node
// Minimal Node.js client for voice.v1.TtsGatewayService: calls the server-streaming Synthesize RPC and writes the
// audio to a WAV file. The .proto files are loaded at run time from the repository's proto/ folder (no generated
// code); proto-loader resolves google/protobuf/*.proto from the copies protobufjs ships.
//
//   node synthesize.js --text "Hello there." --voice NAME --out hello.wav [--target 127.0.0.1:50051]
//                      [--format pcm16|wav] [--rate 24000] [--token TOKEN] [--tls] [--timeout 120]
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

const PROTO_ROOT = process.env.VOICE_PROTO_ROOT || path.resolve(__dirname, '..', '..', 'proto');
const WAV_HEADER_BYTES = 44;

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
    'usage: node synthesize.js --text TEXT --voice NAME --out FILE.wav [options]',
    '  --target HOST:PORT   gateway address (env VOICE_TARGET, default 127.0.0.1:50051)',
    '  --format pcm16|wav   encoding requested from the server (default pcm16); the file is always a WAV',
    '  --rate HZ            output sample rate, 0 = the voice\'s native rate (default 0)',
    '  --token TOKEN        bearer token (env VOICE_TOKEN)',
    '  --tls                use TLS with the system roots',
    '  --timeout SECONDS    deadline for the whole stream (default 120)',
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
  if (!(timeout > 0)) throw new UsageError('--timeout must be a positive number of seconds');
  return { ...values, rate, timeout };
}

class UsageError extends Error {}

function loadGateway() {
  const definition = protoLoader.loadSync(path.join(PROTO_ROOT, 'voice/v1/tts_gateway.proto'), {
    includeDirs: [PROTO_ROOT],
    keepCase: false, // fields become lowerCamelCase, as in the JSON mapping
    longs: Number, // sequence numbers and durations fit easily in a double
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).voice.v1.TtsGatewayService;
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

function synthesize(options) {
  const TtsGatewayService = loadGateway();
  const credentials = options.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const client = new TtsGatewayService(options.target, credentials);
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  const request = {
    text: options.text,
    voice: options.voice,
    outputFormat: {
      encoding: options.format === 'wav' ? 'AUDIO_ENCODING_WAV' : 'AUDIO_ENCODING_PCM16',
      sampleRateHz: options.rate,
      channels: 1,
    },
  };
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;

  return new Promise((resolve, reject) => {
    const call = client.synthesize(request, metadata, { deadline: Date.now() + options.timeout * 1000 });
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
      client.close();
      reject(error);
    });
    call.on('end', () => {
      client.close();
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
    if (typeof error.code === 'number' && error.details !== undefined) {
      // A gRPC status: one line with the code name and the server's message.
      const name = Object.keys(grpc.status).find((key) => grpc.status[key] === error.code) || String(error.code);
      process.stderr.write(`${endLine()}error: ${name}: ${error.details}\n`);
      return EXIT_CODES[error.code] || 8;
    }
    process.stderr.write(`${endLine()}error: ${error.message}\n`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
